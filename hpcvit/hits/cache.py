"""The ragged cache of hit lists: flat per-hit arrays plus per-event offsets, memory-mapped, built once.

``hits-<key>/`` under ``data.cache_dir`` (or the sweep folder): the selected events (cuts on event-level
columns, ``max_samples``, track hits dropped unless ``data.hits.tracks``) as

- ``offsets.i64`` (events + 1), ``features.f32`` (hits x numbers), ``labels.f32`` (hits x 6), ``particle.i32``;
- ``columns.npz``: the event-level columns of those events and their event numbers in the source;
- ``meta.json``: shapes, sources, and what the events hold (hits and particles per event).

The key hashes each source's identity (path, size, mtime, sampled blocks, as the image cache) and every field
that chooses or reads the events. It is built by streaming the sources block by block (memory bounded by a
block, not the data set) under a lock into a temporary folder renamed into place, as the image cache is.
Every event is checked while it is written: a one-line error names the file and event of the first NaN, empty
event, label out of range or event longer than ``data.hits.max_hits``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit import fsio
from hpcvit.config import DataSpec, data_fields
from hpcvit.data.cache import digest, file_identity, locked_build
from hpcvit.data.selection import cut_columns, selection_mask
from hpcvit.data.store import DataError
from hpcvit.hits.parquet import ParquetHits
from hpcvit.hits.store import LABEL_NAMES, HDF5Hits, Hits, HitStore

CACHE_VERSION = 1
BLOCK_HITS = 1 << 20
"""Hits read and written per block while the cache is built."""
MAX_ABS_CHARGE = 2


def hit_store(spec: DataSpec, paths: list[Path]) -> HitStore:
    """The hit store of a data set's files (``data.format``: hdf5 or parquet)."""
    h = spec.hits
    assert h is not None
    kinds = {"hdf5": HDF5Hits, "parquet": ParquetHits}
    if spec.format not in kinds:
        raise DataError(f"hits are read from hdf5 or parquet files, not {spec.format!r}", field="data.format")
    return kinds[spec.format](paths, spec.input_key, spec.target_key, h.particle_key, tuple(h.feature_names))


def cache_key(spec: DataSpec, paths: list[Path]) -> str:
    return digest({"version": CACHE_VERSION, "sources": [file_identity(p) for p in paths],
                   **data_fields(spec, "selection"), "target_key": spec.target_key,
                   "hits": spec.hits.model_dump(mode="json", include={"feature_names", "track_feature", "tracks",
                                                                      "particle_key", "max_hits"})})


@dataclass
class HitCache:
    """A built cache, memory-mapped (opened lazily, so it pickles to loader workers as a path)."""

    dir: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: Path) -> HitCache:
        return cls(path, fsio.read_json(path / "meta.json"))

    @property
    def n(self) -> int:
        return int(self.meta["n_events"])

    def _map(self, name: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        if shape[0] == 0:
            return np.zeros(shape, dtype)
        return np.memmap(self.dir / name, dtype=dtype, mode="r", shape=shape)

    def arrays(self) -> Hits:
        n_hits, width = int(self.meta["n_hits"]), len(self.meta["feature_names"])
        return Hits(np.fromfile(self.dir / "offsets.i64", dtype=np.int64),
                    self._map("features.f32", np.float32, (n_hits, width)),
                    self._map("labels.f32", np.float32, (n_hits, len(LABEL_NAMES))),
                    self._map("particle.i32", np.int32, (n_hits,)))

    def columns(self) -> dict[str, np.ndarray]:
        with np.load(self.dir / "columns.npz") as z:
            return {k: z[k] for k in z.files}

    def where(self, event: int) -> str:
        """The source file and event of cached event ``event``."""
        source = int(self.columns()["__source_event__"][event])
        starts = np.concatenate([[0], np.cumsum(self.meta["file_events"])])
        k = int(np.searchsorted(starts, source, side="right") - 1)
        return f"{self.meta['sources'][k]['path']} (event {source - int(starts[k])})"


def _check(block: Hits, events: np.ndarray, store: HitStore, spec: DataSpec) -> None:
    """Every event of ``block`` (global numbers ``events``) has hits, finite numbers and labels in range."""
    h = spec.hits
    sizes = block.sizes
    if (sizes == 0).any():
        i = int(np.flatnonzero(sizes == 0)[0])
        raise DataError(f"{store.where(int(events[i]))}: an event with no hits" +
                        ("" if h.tracks else " once its tracks' hits are dropped (data.hits.tracks: false)"),
                        field="data.hits")
    if (sizes > h.max_hits).any():
        i = int(np.flatnonzero(sizes > h.max_hits)[0])
        raise DataError(f"{store.where(int(events[i]))}: {int(sizes[i])} hits, more than data.hits.max_hits = "
                        f"{h.max_hits}", field="data.hits")
    event_of = np.repeat(np.arange(block.n), sizes)
    for name, values, field in (("a hit number", block.features, "data.input_key"),
                                ("a label", block.labels, "data.target_key")):
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            i = int(event_of[np.flatnonzero(bad)[0]])
            raise DataError(f"{store.where(int(events[i]))}: {name} is not finite ({int(bad.sum())} hits)",
                            field=field)
    labels = block.labels
    checks = [(np.abs(labels[:, 0]) > MAX_ABS_CHARGE, "charge beyond +-2"),
              ((labels[:, 1] < 0) | (labels[:, 1] != np.round(labels[:, 1])), "|pdg| not a non-negative whole number"),
              (labels[:, 2] < 0, "negative particle energy"),
              (block.particle < 0, "negative particle index")]
    for bad, what in checks:
        if bad.any():
            i = int(event_of[np.flatnonzero(bad)[0]])
            raise DataError(f"{store.where(int(events[i]))}: label out of range: {what}", field="data.target_key")


def _keep_calorimeter(block: Hits, track: int) -> Hits:
    """The block without the tracks' hits (``features[:, track] == 1``)."""
    keep = block.features[:, track] != 1
    sizes = np.bincount(np.repeat(np.arange(block.n), block.sizes)[keep], minlength=block.n)
    return Hits(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), block.features[keep], block.labels[keep],
                block.particle[keep])


def _build(spec: DataSpec, paths: list[Path], tmp: Path) -> None:
    h = spec.hits
    store = hit_store(spec, paths)
    try:
        names = cut_columns(spec)
        have = store.scalar_columns()
        missing = [c for c in names if c not in have]
        if missing:
            raise DataError(f"{paths[0]}: no event-level column {missing[0]!r} (has: {', '.join(have) or 'none'})",
                            field="data.cuts")
        columns = {c: store.column(c) for c in have}
        selected = np.flatnonzero(selection_mask(columns, spec, store.n)).astype(np.int64)
        if spec.max_samples is not None:
            selected = selected[:spec.max_samples]
        if len(selected) == 0:
            raise DataError(f"{paths[0]}: no events pass the cuts {spec.cuts} (of {store.n})", field="data.cuts")
        track = h.feature_names.index(h.track_feature) if (h.track_feature and not h.tracks) else None
        wanted = np.zeros(store.n, bool)
        wanted[selected] = True
        offsets, n_hits, particles = [np.zeros(1, np.int64)], 0, []
        with open(tmp / "features.f32", "wb") as fx, open(tmp / "labels.f32", "wb") as fy, \
                open(tmp / "particle.i32", "wb") as fp:
            for first, block in store.iter_blocks(BLOCK_HITS):
                take = np.flatnonzero(wanted[first:first + block.n])
                if not len(take):
                    continue
                if len(take) < block.n:
                    block = _events(block, take)
                if track is not None:
                    block = _keep_calorimeter(block, track)
                _check(block, first + take, store, spec)
                fx.write(np.ascontiguousarray(block.features, np.float32).tobytes())
                fy.write(np.ascontiguousarray(block.labels, np.float32).tobytes())
                fp.write(np.ascontiguousarray(block.particle, np.int32).tobytes())
                offsets.append(block.offsets[1:] + n_hits)
                n_hits += int(block.offsets[-1])
                particles.append(np.maximum.reduceat(block.particle, block.offsets[:-1]) + 1)
        offsets_all = np.concatenate(offsets)
        offsets_all.tofile(tmp / "offsets.i64")
        np.savez(tmp / "columns.npz", __source_event__=selected, **{k: v[selected] for k, v in columns.items()})
        sizes, n_particles = np.diff(offsets_all), np.concatenate(particles)
        meta = {"version": CACHE_VERSION, "n_events": int(len(selected)), "n_hits": n_hits,
                "n_source": int(store.n), "file_events": [int(x) for x in store.file_events],
                "feature_names": list(h.feature_names), "label_names": list(LABEL_NAMES),
                "sources": [file_identity(p) for p in paths],
                "hits_per_event": {"mean": float(sizes.mean()), "max": int(sizes.max()), "min": int(sizes.min())},
                "particles_per_event": {"mean": float(n_particles.mean()), "max": int(n_particles.max())},
                "spec": data_fields(spec, "selection")}
        fsio.write_json(tmp / "meta.json", meta)
    finally:
        store.close()


def _events(block: Hits, take: np.ndarray) -> Hits:
    """Events ``take`` (sorted positions) of a block."""
    wanted = np.zeros(block.n, bool)
    wanted[take] = True
    keep = np.repeat(wanted, block.sizes)
    return Hits(np.concatenate([[0], np.cumsum(block.sizes[take])]).astype(np.int64), block.features[keep],
                block.labels[keep], block.particle[keep])


def ensure(spec: DataSpec, paths: list[Path], root: Path) -> HitCache:
    """The cache of ``spec``'s events, built if missing, under ``data.cache_dir`` (else ``root/cache``)."""
    cache_dir = Path(spec.cache_dir) if spec.cache_dir else root / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = f"hits-{cache_key(spec, paths)}"
    return HitCache.open(locked_build(cache_dir, name, lambda tmp: _build(spec, paths, tmp)))


def describe(cache: HitCache) -> str:
    m = cache.meta
    return (f"{m['n_events']} events, {m['hits_per_event']['mean']:.0f} hits and "
            f"{m['particles_per_event']['mean']:.1f} particles per event")
