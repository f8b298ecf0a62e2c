"""Peak anonymous memory of ``hpcvit data convert`` and of the channel-statistics pass at two data-set sizes.

Jets in the published Parquet layout (3 x 125 x 125 doubles, one jet per row group, sparse like real
calorimeter images) are written for each size in a temporary folder; then each phase runs in a fresh process:

convert     ``hpcvit data convert FILE --cache-dir DIR --workers 1``: decode into the raw cache, the
            training split's channel statistics over it, and the preprocessed cache (one decoding process,
            so that both sizes run the same processes)
stats       ``build_datasets`` without a cache: the selection and the channel statistics of the training
            split read straight from the Parquet file (what training does without ``data.cache_dir``)

With ``--hdf5`` the same jets are also written as HDF5 in the electron/photon layout (``X``: N x 125 x
125 x 3 float32 in chunks of 64 images, ``y``) and both phases run on that file too (``convert-h5``,
``stats-h5``).

Memory is the peak of ``RssAnon`` (``/proc/PID/status``) summed over the process and its children, sampled
every ``--interval`` seconds while it runs. ``RssAnon`` counts the process's private memory (heap, numpy
arrays, Arrow buffers) and leaves out file pages: a memory-mapped cache read or written by the process
shows in ``RSS`` (``RssFile``) but is page cache the kernel reclaims, so plain ``RSS`` grows with the file
whatever the code holds. The kernel keeps no high-water mark of anonymous memory alone (``VmHWM`` is of
``RSS``), hence the sampling; a spike shorter than the interval can be missed, which is why the blocks
measured are tens of MiB that live for many intervals. The peak ``RSS`` is printed beside it for reference.
Each phase runs ``--repeats`` times per size and the median peak is reported (the peak of one run varies by
a few tens of MiB with where the allocator's freed pages happen to be when a batch is decoded).

Target: peak(large) / peak(small) <= 1.15 per phase (memory bounded by the block size, not the data set).

Usage: python benchmarks/memory.py [--sizes 1000 4000] [--repeats 3] [--hdf5] [--interval 0.005] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET = 1.15
STATS = """
import sys
from hpcvit.data import build_datasets
from hpcvit.config import DataSpec
spec = DataSpec(format=sys.argv[3], paths=[sys.argv[1]], val_fraction=0.2, test_fraction=0.1)
bundle = build_datasets(spec, sys.argv[2], check_targets=False)
print(bundle.stats.mean.tolist(), bundle.stats.std.tolist())
"""


def write_jets(path: Path, n: int, seed: int = 0, chunk: int = 100) -> Path:
    """``n`` sparse 3 x 125 x 125 jets in the published layout (one row group per jet), ``chunk`` at a time."""
    import numpy as np
    import pyarrow.parquet as pq

    from hpcvit.data.parquet import jets_table

    rng = np.random.default_rng(seed)
    writer = None
    try:
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            x = rng.exponential(1.0, (m, 3, 125, 125)) * (rng.random((m, 3, 125, 125)) < 0.05)
            table = jets_table(x, {"y": (np.arange(i, i + m) % 2).astype(np.float64), "pt": rng.uniform(400, 600, m)})
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="snappy")
            writer.write_table(table, row_group_size=1)
    finally:
        if writer is not None:
            writer.close()
    return path


def write_hdf5(path: Path, parquet: Path) -> Path:
    """The jets of ``parquet`` as HDF5 (``X`` N x H x W x C float32, chunks of 64 images; ``y``)."""
    import h5py
    import numpy as np

    from hpcvit.data.parquet import ParquetStore

    store = ParquetStore([parquet], "X")
    with h5py.File(path, "w") as f:
        x = f.create_dataset("X", shape=(store.n, *store.shape[1:], store.shape[0]), dtype=np.float32,
                             chunks=(64, *store.shape[1:], store.shape[0]))
        for rows, xb in store.iter_read(np.arange(store.n), block=256):
            x[int(rows[0]):int(rows[-1]) + 1] = xb.transpose(0, 2, 3, 1)
        f.create_dataset("y", data=store.column("y"))
    store.close()
    return path


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (through ``/proc/PID/task/TID/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _status_kib(pid: int, fields: tuple[str, ...]) -> dict[str, int]:
    got = dict.fromkeys(fields, 0)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in got:
                    got[key] = int(line.split()[1])
    except OSError:
        pass
    return got


def peak_memory(cmd: list[str], interval: float, env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd``; the peak of RssAnon and of RSS summed over its process tree (MiB), and its wall time."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    anon = rss = 0
    while proc.poll() is None:
        tot = {"RssAnon": 0, "VmRSS": 0}
        for p in _tree(proc.pid):
            for k, v in _status_kib(p, ("RssAnon", "VmRSS")).items():
                tot[k] += v
        anon, rss = max(anon, tot["RssAnon"]), max(rss, tot["VmRSS"])
        time.sleep(interval)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err.decode()[-2000:]}")
    return {"anon_mib": anon / 1024, "rss_mib": rss / 1024, "seconds": time.monotonic() - t0,
            "stdout": out.decode().strip()}


def median_peak(cmd: list[str], repeats: int, interval: float, env: dict[str, str],
                fresh: Path | None = None) -> dict[str, Any]:
    """:func:`peak_memory` of ``repeats`` runs of ``cmd`` (``fresh`` removed before each): the median of each
    figure, and every run's peak RssAnon."""
    runs = []
    for _ in range(repeats):
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)
        runs.append(peak_memory(cmd, interval, env))
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in ("anon_mib", "rss_mib", "seconds")}
    out["anon_mib_runs"] = [r["anon_mib"] for r in runs]
    return out


def measure(n: int, work: Path, interval: float, hdf5: bool, repeats: int) -> dict[str, Any]:
    sources = {"": write_jets(work / f"jets_{n}.parquet", n)}
    if hdf5:
        sources["-h5"] = write_hdf5(work / f"jets_{n}.h5", sources[""])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out: dict[str, Any] = {"n": n}
    for tag, src in sources.items():
        fmt = "hdf5" if tag else "parquet"
        out[f"source{tag}_mib"] = src.stat().st_size / 2**20
        cache = work / f"cache{tag}_{n}"
        out[f"convert{tag}"] = median_peak([sys.executable, "-m", "hpcvit.cli", "data", "convert", str(src),
                                            "--cache-dir", str(cache), "--workers", "1"], repeats, interval, env,
                                           fresh=cache)
        out[f"stats{tag}"] = median_peak([sys.executable, "-c", STATS, str(src), str(work), fmt], repeats,
                                         interval, env)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[1000, 4000], metavar=("SMALL", "LARGE"))
    ap.add_argument("--repeats", type=int, default=3, help="runs of each phase per size (median reported)")
    ap.add_argument("--hdf5", action="store_true", help="also measure the same jets as an HDF5 file")
    ap.add_argument("--interval", type=float, default=0.005, help="seconds between samples")
    ap.add_argument("--workdir", help="folder for the data and caches (default: a temporary one)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hpcvit-memory-", dir=args.workdir) as tmp:
        runs = [measure(n, Path(tmp), args.interval, args.hdf5, args.repeats) for n in args.sizes]
    small, large = runs
    print(f"{'phase':<10} {'jets':>6} {'peak RssAnon MiB':>17} {'peak RSS MiB':>13} {'seconds':>8}")
    ratios: dict[str, float] = {}
    for phase in ("convert", "stats", *(("convert-h5", "stats-h5") if args.hdf5 else ())):
        for r in runs:
            m = r[phase]
            print(f"{phase:<10} {r['n']:>6} {m['anon_mib']:>17.0f} {m['rss_mib']:>13.0f} {m['seconds']:>8.1f}")
        ratios[phase] = large[phase]["anon_mib"] / small[phase]["anon_mib"]
    print()
    for phase, ratio in ratios.items():
        print(f"{phase:<10}: median peak RssAnon {large['n']} / {small['n']} jets = {ratio:.2f} "
              f"({'ok' if ratio <= TARGET else 'over'} the target <= {TARGET})")
    if args.json:
        Path(args.json).write_text(json.dumps({"target": TARGET, "ratios": ratios, "runs": runs}, indent=1) + "\n")
    return 0 if all(r <= TARGET for r in ratios.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
