"""``hpcvit data generate --process calo-hits``: events of calorimeter hits in the seed's storage.

Events (:mod:`hpcvit.hits.simulate`) are made in shards by worker processes and written in order, so a run is
the same for a seed whatever the number of workers. HDF5 output holds, as ``ak.to_buffers`` groups, ``feats``
(E, x, y, z, t, subdetector, is_track per hit), ``labels`` (the hit's particle: charge, |pdg|, E, direction),
``particle`` (its index in the event) and ``fractions`` (the three largest contributors of a cell and their
shares), plus event-level data sets (``n_particles``, ``jet_energy``, ``jet_eta``, ``jet_phi``, ``n_noise``,
``min_distance``, ``n_hits``); a ``.parquet`` output holds the same as nested lists. The file's ``metadata``
attribute records the run: process, seed, configuration, hits and particles per event, what is modelled.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit import __version__
from hpcvit.hits import detector
from hpcvit.hits.simulate import EventConfig, make_event
from hpcvit.parallel import spawn_map

EVENT_COLUMNS = ("n_particles", "jet_energy", "jet_eta", "jet_phi", "n_noise", "min_distance")


def _shard(args: tuple[int, int, int, EventConfig]) -> list[dict[str, Any]]:
    seed, lo, hi, cfg = args
    return [make_event(seed, i, cfg) for i in range(lo, hi)]


def events(n: int, seed: int, cfg: EventConfig, workers: int = 1, shard: int = 50) -> list[dict[str, Any]]:
    """Events ``0 .. n-1`` of run ``seed``, in order."""
    jobs = [(seed, lo, min(lo + shard, n), cfg) for lo in range(0, n, shard)]
    if workers <= 1 or len(jobs) == 1:
        return [e for job in jobs for e in _shard(job)]
    return [e for part in spawn_map(_shard, jobs, min(workers, len(jobs)), what="generator") for e in part]


def _ragged(evs: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    sizes = [len(e[key]) for e in evs]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), np.concatenate([e[key] for e in evs])


def write(evs: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> None:
    """``evs`` as HDF5 (the seed's layout) or, for a ``.parquet`` path, Parquet; written atomically."""
    from hpcvit import fsio

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = fsio.temp_path(out)
    try:
        if out.suffix == ".parquet":
            _write_parquet(evs, tmp, meta)
        else:
            _write_hdf5(evs, tmp, meta)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_hdf5(evs: list[dict[str, Any]], path: Path, meta: dict[str, Any]) -> None:
    import h5py

    from hpcvit.hits.layout import write_group

    with h5py.File(path, "w") as f:
        for key, name in (("features", "feats"), ("labels", "labels"), ("particle", "particle"),
                          ("fractions", "fractions")):
            offsets, values = _ragged(evs, key)
            write_group(f, name, offsets, values, compression="lzf")
        for col in EVENT_COLUMNS:
            f.create_dataset(col, data=np.array([e[col] for e in evs], dtype=np.float64))
        f.create_dataset("n_hits", data=np.array([len(e["features"]) for e in evs], dtype=np.int64))
        f.attrs["metadata"] = json.dumps(meta)


def _write_parquet(evs: list[dict[str, Any]], path: Path, meta: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def nested(key: str, width: int | None) -> pa.Array:
        offsets, values = _ragged(evs, key)
        flat = pa.array(values.reshape(-1))
        inner = pa.FixedSizeListArray.from_arrays(flat, width) if width else flat
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), inner)

    table = pa.table({"feats": nested("features", 7), "labels": nested("labels", 6), "particle": nested("particle", None),
                      "fractions": nested("fractions", 6),
                      **{c: pa.array([float(e[c]) for e in evs]) for c in EVENT_COLUMNS},
                      "n_hits": pa.array([len(e["features"]) for e in evs], pa.int64())})
    table = table.replace_schema_metadata({"hpcvit": json.dumps(meta)})
    pq.write_table(table, path, row_group_size=256)


def generate(n: int, out: Path, seed: int, cfg: EventConfig, workers: int = 1) -> dict[str, Any]:
    """Make and write ``n`` events; the summary (also the file's metadata)."""
    t0 = time.time()
    evs = events(n, seed, cfg, workers)
    hits = np.array([len(e["features"]) for e in evs])
    calo = np.array([int((e["features"][:, 6] == 0).sum()) for e in evs])
    particles = np.array([e["n_particles"] for e in evs])
    meta = {"process": "calo-hits", "seed": seed, "n": n, "hpcvit": __version__, "config": cfg.__dict__,
            "feature_names": ["E", "x", "y", "z", "t", "subdetector", "is_track"],
            "label_names": ["charge", "abs_pdg", "energy", "dir_x", "dir_y", "dir_z"],
            "hits_per_event": {"mean": float(hits.mean()), "max": int(hits.max()), "calorimeter_mean": float(calo.mean())},
            "particles_per_event": {"mean": float(particles.mean()), "max": int(particles.max())},
            "detector": {"field_T": detector.FIELD_T, "ecal": [detector.ECAL_LAYERS, detector.ECAL_CELL_MM],
                         "hcal": [detector.HCAL_LAYERS, detector.HCAL_CELL_MM]},
            "modelled": "see hpcvit/hits/detector.py"}
    write(evs, out, meta)
    return {**meta, "output": str(out), "seconds": round(time.time() - t0, 1)}


def run_cli(args: argparse.Namespace) -> int:
    """``hpcvit data generate --process calo-hits`` (options: -n, -o, --seed, --workers)."""
    workers = args.workers or os.cpu_count() or 1
    out = Path(args.output or f"data/calo_hits_n{args.n}_seed{args.seed}.h5")
    problems = [(what, v) for what, v in (("--jet-energy", args.jet_energy), ("--particles", args.particles))
                if not 0 < v[0] <= v[1]]
    if problems or args.cone <= 0 or args.ecal_cell_mm <= 0 or args.noise < 0 or args.n < 1:
        what = problems[0][0] if problems else "-n, --cone, --ecal-cell-mm and --noise"
        print(f"error: data generate: {what}: give positive values (MIN <= MAX for a range)", file=__import__("sys").stderr)
        return 2
    cfg = EventConfig(jet_energy=tuple(args.jet_energy), particles=tuple(args.particles), cone=args.cone,
                      ecal_cell_mm=args.ecal_cell_mm, noise=args.noise)
    summary = generate(args.n, out, args.seed, cfg, workers)
    line = (f"wrote {args.n} events to {out} in {summary['seconds']:.1f} s: {summary['hits_per_event']['mean']:.0f} "
            f"hits ({summary['hits_per_event']['calorimeter_mean']:.0f} in the calorimeters) and "
            f"{summary['particles_per_event']['mean']:.1f} particles per event")
    print(json.dumps(summary, indent=1) if args.json else line)
    return 0
