"""Hit lists as users bring them: files written by awkward in the seed's layout (every form awkward gives a
list of hits) and by pyarrow, the particle index derived where a file has none, the ragged cache and its
one-line errors, length batching; and the calorimeter-hit generator (reproducible, labels that add up)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcvit.config import DataSpec, HitsSpec
from hpcvit.data import DataError
from hpcvit.hits.cache import ensure, hit_store
from hpcvit.hits.data import arrange_by_length, padding_fraction
from hpcvit.hits.generate import generate
from hpcvit.hits.simulate import EventConfig
from hpcvit.hits.store import particles_from_labels

ak = pytest.importorskip("awkward", reason="awkward is installed with the 'generate' extra")
FEATURES = ["E", "x", "y", "z", "t", "subdetector", "is_track"]


def _events(n: int = 12, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random events: hits of 7 numbers, each hit's particle and that particle's label row."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k, h = int(rng.integers(1, 4)), int(rng.integers(3, 9))
        particle = rng.integers(0, k, h).astype(np.int32)
        rows = np.column_stack([rng.choice([-1, 0, 1], k), rng.choice([22, 211, 2112], k), rng.uniform(1, 9, k),
                                rng.normal(size=(k, 3))])
        feats = np.column_stack([rng.uniform(0.01, 1, h), rng.normal(size=(h, 3)) * 1000, rng.uniform(5, 9, h),
                                 rng.integers(1, 3, h), np.zeros(h)])
        out.append({"feats": feats.astype(np.float32), "labels": rows[particle].astype(np.float32),
                    "particle": particle})
    return out


def _write_awkward(path: Path, events: list[dict[str, np.ndarray]], form: str, particle: bool = True,
                   columns: dict[str, np.ndarray] | None = None) -> Path:
    """The seed's storage: ``ak.to_buffers`` of each array into its own HDF5 group."""
    def array(key: str) -> ak.Array:
        values = [e[key] for e in events]
        if form == "regular":
            return ak.to_regular(ak.Array([v.tolist() for v in values]), axis=2)
        if form == "jagged":
            return ak.Array([v.tolist() for v in values])
        names = FEATURES if key == "feats" else [f"l{i}" for i in range(6)]
        return ak.Array([[dict(zip(names, hit)) for hit in v.tolist()] for v in values])

    with h5py.File(path, "w") as f:
        for key in ("feats", "labels"):
            form_, length, buffers = ak.to_buffers(array(key))
            g = f.create_group(key)
            g.attrs["form"], g.attrs["length"] = form_.to_json(), length
            for name, buf in buffers.items():
                g.create_dataset(name, data=buf)
        if particle:
            form_, length, buffers = ak.to_buffers(ak.Array([e["particle"].tolist() for e in events]))
            g = f.create_group("particle")
            g.attrs["form"], g.attrs["length"] = form_.to_json(), length
            for name, buf in buffers.items():
                g.create_dataset(name, data=buf)
        for name, values in (columns or {}).items():
            f.create_dataset(name, data=values)
    return path


def _write_parquet(path: Path, events: list[dict[str, np.ndarray]], kind: str, row_group: int = 5) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def column(key: str) -> pa.Array:
        values = [e[key] for e in events]
        if kind == "struct":
            names = FEATURES if key == "feats" else [f"l{i}" for i in range(6)]
            return pa.array([[dict(zip(names, map(float, hit))) for hit in v] for v in values])
        return pa.array([v.tolist() for v in values])  # list<list<double>>

    table = pa.table({"feats": column("feats"), "labels": column("labels"),
                      "particle": pa.array([e["particle"].tolist() for e in events]),
                      "n_particles": pa.array([int(e["particle"].max()) + 1 for e in events])})
    pq.write_table(table, path, row_group_size=row_group)
    return path


def _spec(path: Path, fmt: str = "hdf5", **hits) -> DataSpec:
    return DataSpec(format=fmt, paths=[str(path)], task="hit_clustering", input_key="feats", target_key="labels",
                    hits=HitsSpec(**hits))


def _read_all(spec: DataSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    store = hit_store(spec, [Path(p) for p in spec.paths])
    block = store.read(0, store.n)
    return block.offsets, block.features, block.labels, block.particle


@pytest.mark.parametrize("form", ["regular", "jagged", "record"])
def test_the_seeds_storage_reads_back_every_hit_exactly(tmp_path: Path, form: str) -> None:
    events = _events()
    path = _write_awkward(tmp_path / "hits.h5", events, form)
    offsets, feats, labels, particle = _read_all(_spec(path))
    assert offsets.tolist() == np.cumsum([0] + [len(e["feats"]) for e in events]).tolist()
    np.testing.assert_array_equal(feats, np.concatenate([e["feats"] for e in events]))
    np.testing.assert_array_equal(labels, np.concatenate([e["labels"] for e in events]))
    np.testing.assert_array_equal(particle, np.concatenate([e["particle"] for e in events]))
    # any event range, across the block boundaries of a streaming read
    store = hit_store(_spec(path), [path])
    part = store.read(3, 7)
    np.testing.assert_array_equal(part.features, np.concatenate([e["feats"] for e in events[3:7]]))


@pytest.mark.parametrize("kind", ["lists", "struct"])
@pytest.mark.parametrize("row_group", [1, 5, 100])
def test_parquet_nested_lists_read_back_exactly(tmp_path: Path, kind: str, row_group: int) -> None:
    events = _events(13)
    path = _write_parquet(tmp_path / "hits.parquet", events, kind, row_group)
    offsets, feats, labels, particle = _read_all(_spec(path, "parquet"))
    np.testing.assert_array_equal(feats, np.concatenate([e["feats"] for e in events]))
    np.testing.assert_array_equal(labels, np.concatenate([e["labels"] for e in events]))
    np.testing.assert_array_equal(particle, np.concatenate([e["particle"] for e in events]))
    store = hit_store(_spec(path, "parquet"), [path])
    np.testing.assert_array_equal(store.read(4, 11).features, np.concatenate([e["feats"] for e in events[4:11]]))


def test_without_particle_indices_hits_with_one_label_row_are_one_particle(tmp_path: Path) -> None:
    events = _events()
    path = _write_awkward(tmp_path / "hits.h5", events, "regular", particle=False)
    _, _, labels, particle = _read_all(_spec(path))
    offsets = np.cumsum([0] + [len(e["feats"]) for e in events])
    for i, e in enumerate(events):
        got = particle[offsets[i]:offsets[i + 1]]
        # the same partition of the event's hits, numbered by first appearance
        _, want = np.unique(e["particle"], return_inverse=True)
        first = {p: k for k, p in enumerate(dict.fromkeys(want.tolist()))}
        assert got.tolist() == [first[p] for p in want.tolist()]
    assert particles_from_labels(np.array([0, 0]), np.zeros((0, 6))).shape == (0,)


def test_bad_hit_files_get_one_line_errors(tmp_path: Path) -> None:
    events = _events()
    odd = [dict(e) for e in events]
    odd[2] = {**odd[2], "feats": [row.tolist() for row in odd[2]["feats"]]}
    odd[2]["feats"][1] = odd[2]["feats"][1][:5]  # one hit with 5 numbers
    path = tmp_path / "ragged.h5"
    with h5py.File(path, "w") as f:
        for key, values in (("feats", ak.Array([e["feats"] if isinstance(e["feats"], list) else e["feats"].tolist()
                                                for e in odd])), ("labels", ak.Array([e["labels"].tolist()
                                                                                      for e in odd]))):
            form, length, buffers = ak.to_buffers(values)
            g = f.create_group(key)
            g.attrs["form"], g.attrs["length"] = form.to_json(), length
            for name, buf in buffers.items():
                g.create_dataset(name, data=buf)
    with pytest.raises(DataError, match=r"ragged\.h5:feats \(event 2\): a hit has 5 numbers, the others 7") as e:
        _read_all(_spec(path))
    assert "\n" not in str(e.value)
    narrow = _write_awkward(tmp_path / "narrow.h5", [{**e, "feats": e["feats"][:, :5]} for e in events], "regular")
    with pytest.raises(DataError, match="hits have 5 numbers each, data.hits.feature_names names 7"):
        _read_all(_spec(narrow))
    with pytest.raises(DataError, match="no awkward array group 'hits'"):
        hit_store(_spec(narrow).model_copy(update={"input_key": "hits"}), [narrow])
    (tmp_path / "junk.h5").write_bytes(b"not hdf5" * 100)
    with pytest.raises(DataError, match="junk.h5: not a readable HDF5 file"):
        hit_store(_spec(tmp_path / "junk.h5"), [tmp_path / "junk.h5"])


@pytest.mark.parametrize("defect,words", [
    ("nan", "event 4\\): a hit number is not finite"),
    ("empty", "event 4\\): an event with no hits"),
    ("charge", "event 4\\): label out of range: charge beyond"),
    ("pdg", "event 4\\): label out of range: \\|pdg\\| not a non-negative whole number"),
    ("long", "event 4\\): \\d+ hits, more than data.hits.max_hits = 8"),
])
def test_the_cache_refuses_bad_events_naming_them(tmp_path: Path, defect: str, words: str) -> None:
    events = _events()
    e = events[4] = {k: v.copy() for k, v in events[4].items()}
    if defect == "nan":
        e["feats"][0, 1] = np.nan
    elif defect == "empty":
        events[4] = {"feats": np.zeros((0, 7), np.float32), "labels": np.zeros((0, 6), np.float32),
                     "particle": np.zeros(0, np.int32)}
    elif defect == "charge":
        e["labels"][:, 0] = 5
    elif defect == "pdg":
        e["labels"][:, 1] = 22.5
    else:  # three times its hits: at least 9, where every other event has at most 8
        events[4] = {k: np.concatenate([v, v, v]) for k, v in e.items()}
    path = _write_awkward(tmp_path / "bad.h5", events, "regular")
    spec = _spec(path, max_hits=8) if defect == "long" else _spec(path)
    with pytest.raises(DataError, match=words) as info:
        ensure(spec, [path], tmp_path)
    assert str(tmp_path / "bad.h5") in str(info.value) and "\n" not in str(info.value)
    assert not list((tmp_path / "cache").glob("hits-*/meta.json")), "nothing half-written is left as a cache"


def test_the_cache_selects_by_event_columns_and_drops_tracks(tmp_path: Path) -> None:
    events = _events(20)
    for e in events:
        e["feats"][0, 6] = 1  # the first hit of every event is a track's
    n_part = np.array([int(e["particle"].max()) + 1 for e in events])
    path = _write_awkward(tmp_path / "hits.h5", events, "regular", columns={"n_particles": n_part.astype(float)})
    spec = _spec(path, tracks=False).model_copy(update={"cuts": {"n_particles": [2, None]}})
    cache = ensure(spec, [path], tmp_path)
    kept = np.flatnonzero(n_part >= 2)
    assert cache.n == len(kept) and cache.columns()["__source_event__"].tolist() == kept.tolist()
    arrays = cache.arrays()
    assert (arrays.features[:, 6] == 0).all()
    assert np.diff(arrays.offsets).tolist() == [len(events[i]["feats"]) - 1 for i in kept]
    again = ensure(spec, [path], tmp_path)
    assert again.dir == cache.dir, "built once, then reused"


def test_length_batching_keeps_the_batches_and_cuts_the_padding() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(50, 1500, 2000)
    order = rng.permutation(2000).tolist()
    arranged = arrange_by_length(order, sizes, 16, seed=3)
    assert sorted(arranged) == sorted(order) and arranged[-len(order) % 16 or None:] is not None
    assert arranged == arrange_by_length(order, sizes, 16, seed=3), "a pure function of its arguments"
    assert arranged != arrange_by_length(order, sizes, 16, seed=4)
    assert padding_fraction(sizes[arranged], 16) < 0.1 < padding_fraction(sizes[order], 16)
    # the last, short batch keeps the plan's size
    assert set(arranged[-(2000 % 16):]) == set(order[-(2000 % 16):])


def test_generated_events_are_reproducible_labelled_and_physical(tmp_path: Path) -> None:
    cfg = EventConfig(jet_energy=(10.0, 30.0), particles=(2, 5))
    one = generate(40, tmp_path / "a.h5", seed=7, cfg=cfg, workers=1)
    two = generate(40, tmp_path / "b.h5", seed=7, cfg=cfg, workers=2)
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes(), "same seed, any worker count"
    assert one["hits_per_event"] == two["hits_per_event"]
    generate(40, tmp_path / "c.parquet", seed=7, cfg=cfg, workers=1)
    spec = _spec(tmp_path / "a.h5")
    offsets, feats, labels, particle = _read_all(spec)
    p_offsets, p_feats, _, _ = _read_all(_spec(tmp_path / "c.parquet", "parquet"))
    np.testing.assert_array_equal(p_feats, feats)
    with h5py.File(tmp_path / "a.h5") as f:
        meta = json.loads(f.attrs["metadata"])
        n_particles, jet = f["n_particles"][:], f["jet_energy"][:]
        fractions = f["fractions"]["node2-data"][:].reshape(-1, 6)
    assert meta["seed"] == 7 and meta["particles_per_event"]["mean"] == pytest.approx(n_particles.mean())
    for i in range(40):
        lo, hi = offsets[i], offsets[i + 1]
        p, lab, f = particle[lo:hi], labels[lo:hi], feats[lo:hi]
        real = lab[:, 1] > 0
        assert set(p[real]) <= set(range(int(n_particles[i]))), "labels index the event's particles"
        assert (lab[~real] == 0).all() and (p[~real] == n_particles[i]).all(), "noise hits: their own index"
        energies = {int(k): float(e) for k, e in zip(p[real], lab[real, 2])}
        assert sum(energies.values()) <= jet[i] + 1e-3 * len(energies) + 0.3 * n_particles[i]
        calo = f[:, 6] == 0
        assert (f[calo, 5] > 0).all() and (f[~calo, 5] == 0).all(), "track hits in the tracker, the rest in calo"
        radius = np.hypot(f[calo, 1], f[calo, 2])
        assert (radius > 1800).all() and (radius < 3400).all()
    # a cell's label is its largest contributor: the first fraction is its particle and the largest share
    assert (fractions[:, 0] == particle).all() and (fractions[:, 1] >= 0.3).all()
    assert (fractions[:, 1] >= np.where(fractions[:, 3] > 0, fractions[:, 3], 0)).all()
