"""The data readers against direct pyarrow/h5py readers of the same files, measured side by side in one run.

Parquet (3 x 125 x 125 jets in the published nested-list layout), on a file of one-row groups (as the CMS
converter writes) and on the same jets in large row groups:
  baseline   ``read_row_group`` per row group + one flatten of the three list levels + ``astype(float32)``,
             with pyarrow's default threads and with ``use_threads=False``; the faster of the two each round
  bulk       hpcvit's ``iter_read`` (what ``hpcvit data convert`` and the statistics pass use)
  read       hpcvit's ``read()`` of consecutive blocks of rows
  ceiling    for context only: ``np.asarray(...).astype(float32)`` of the flat float64 leaf values already in
             memory (no Parquet decoding at all)
HDF5 (32 x 32 x 2 float32, contiguous and lzf chunks of 1,024 rows):
  baseline   h5py ``read_direct`` of the same chunk-aligned slabs into one preallocated buffer (file layout)
  bulk/read  hpcvit's ``iter_read`` / ``read()``: the same slabs, delivered as NCHW float32
Every round runs every reader once, in a rotating order; the ratio is the median over rounds of
reader / baseline. Files are written fresh into a temporary directory.

Usage: python benchmarks/data_readers.py [--jets 1000] [--big-group 500] [--photons 40000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_throughput import (  # the benchmarks' shared data writers
    make_hdf5,
    make_parquet,
)

TARGET = 0.9


# -- baselines ------------------------------------------------------------------------------------------------
def parquet_baseline(path: Path, use_threads: bool) -> int:
    """Direct reader: each row group, the image column flattened to its leaf values, reshaped, float32."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    n = 0
    for g in range(pf.metadata.num_row_groups):
        col = pf.read_row_group(g, columns=["X_jets"], use_threads=use_threads).column(0).combine_chunks()
        x = col.flatten().flatten().flatten().to_numpy().reshape(len(col), 3, 125, 125).astype(np.float32)
        n += len(x)
    return n


def parquet_ceiling(path: Path) -> Callable[[], int]:
    """The float64 -> float32 conversion of leaf values already decoded (context: no Parquet work)."""
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=["X_jets"]).column(0).combine_chunks()
    leaves, n = col.flatten().flatten().flatten(), len(col)

    def run() -> int:
        np.asarray(leaves).astype(np.float32)
        return n
    return run


def hdf5_baseline(path: Path, step: int) -> int:
    """h5py ``read_direct`` of chunk-aligned slabs of ``step`` rows into one preallocated buffer."""
    import h5py

    with h5py.File(path, "r") as f:
        d = f["X"]
        buf = np.empty((step, *d.shape[1:]), dtype=d.dtype)
        for lo in range(0, d.shape[0], step):
            m = min(step, d.shape[0] - lo)
            d.read_direct(buf, np.s_[lo:lo + m], np.s_[:m])
        return int(d.shape[0])


# -- hpcvit's readers -----------------------------------------------------------------------------------------
def bulk(store, block: int) -> int:
    n = 0
    for rows, _ in store.iter_read(np.arange(store.n), block=block):
        n += len(rows)
    return n


def blocks(store, block: int) -> int:
    out = np.empty((block, *store.shape), dtype=np.float32)
    for lo in range(0, store.n, block):
        hi = min(store.n, lo + block)
        store.read(np.arange(lo, hi), out[:hi - lo])
    return store.n


def measure(readers: dict[str, Callable[[], int]], rounds: int) -> dict[str, list[float]]:
    """samples/s of every reader, ``rounds`` times, interleaved (each round in a rotated order)."""
    names = list(readers)
    rates: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            n = readers[name]()
            rates[name].append(n / (time.perf_counter() - t0))
    return rates


def ratios(rates: dict[str, list[float]], base: list[str], readers: list[str]) -> dict[str, float]:
    """Median over rounds of reader / (the best baseline of that round)."""
    best = np.max([rates[b] for b in base], axis=0)
    return {r: float(np.median(np.asarray(rates[r]) / best)) for r in readers}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jets", type=int, default=1000, help="Parquet jets written")
    ap.add_argument("--big-group", type=int, default=500, help="rows per row group of the large-group file")
    ap.add_argument("--photons", type=int, default=40000, help="HDF5 32 x 32 x 2 samples written")
    ap.add_argument("--block", type=int, default=256, help="rows per read (iter_read block, read() size)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results_data_readers.json")
    args = ap.parse_args(argv)

    import h5py
    import pyarrow.parquet as pq

    from hpcvit.data.hdf5 import HDF5Store
    from hpcvit.data.parquet import ParquetStore

    tmp = Path(tempfile.mkdtemp(prefix="hpcvit-readers-"))
    out: dict[str, object] = {"cpus": os.cpu_count(), "jets": args.jets, "photons": args.photons,
                              "block": args.block, "rounds": args.rounds, "target": TARGET}
    rows = []
    try:
        one = make_parquet(tmp / "one.parquet", args.jets)
        big = tmp / "big.parquet"
        pq.write_table(pq.read_table(one), big, row_group_size=args.big_group, compression="snappy")
        for label, path in ((f"Parquet, one-row groups ({args.jets} jets)", one),
                            (f"Parquet, {args.big_group}-row groups ({args.jets} jets)", big)):
            store = ParquetStore([path])
            rates = measure({"baseline (threads)": lambda p=path: parquet_baseline(p, True),
                             "baseline (1 thread)": lambda p=path: parquet_baseline(p, False),
                             "bulk": lambda s=store: bulk(s, args.block),
                             "read": lambda s=store: blocks(s, args.block),
                             "ceiling": parquet_ceiling(path)}, args.rounds)
            r = ratios(rates, ["baseline (threads)", "baseline (1 thread)"], ["bulk", "read", "ceiling"])
            rows.append({"case": label, "rates": {k: float(np.median(v)) for k, v in rates.items()}, "ratios": r})
            store.close()

        for label, kw in (("contiguous", {}), ("lzf chunks of 1,024", {"chunks": True})):
            path = tmp / f"photons_{'c' if not kw else 'lzf'}.h5"
            if kw:
                make_hdf5(path, args.photons)
            else:
                src = make_hdf5(tmp / "src.h5", args.photons)
                with h5py.File(src) as f, h5py.File(path, "w") as g:
                    g.create_dataset("X", data=f["X"][...])
                    g.create_dataset("y", data=f["y"][...])
            store = HDF5Store([path])
            step = store._block_rows(0)
            step = max(step, (args.block // step) * step)
            rates = measure({"baseline": lambda p=path, s=step: hdf5_baseline(p, s),
                             "bulk": lambda s=store: bulk(s, args.block),
                             "read": lambda s=store, b=step: blocks(s, b)}, args.rounds)
            rows.append({"case": f"HDF5 {label} ({args.photons} x 32 x 32 x 2, slabs of {step})",
                         "rates": {k: float(np.median(v)) for k, v in rates.items()},
                         "ratios": ratios(rates, ["baseline"], ["bulk", "read"])})
            store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    out["rows"] = rows
    print("| case | baseline samples/s | iter_read samples/s | read() samples/s | iter_read / baseline | "
          "read() / baseline | target |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        rt, ra = row["rates"], row["ratios"]
        base = max(v for k, v in rt.items() if k.startswith("baseline"))
        ok = "met" if min(ra["bulk"], ra["read"]) >= TARGET else "NOT met"
        print(f"| {row['case']} | {base:,.0f} | {rt['bulk']:,.0f} | {rt['read']:,.0f} | {ra['bulk']:.2f} | "
              f"{ra['read']:.2f} | >= {TARGET} ({ok}) |")
    for row in rows:
        if "ceiling" in row["ratios"]:
            print(f"{row['case']}: float64 -> float32 of decoded leaves {row['rates']['ceiling']:,.0f} samples/s "
                  f"(the reader reaches {row['ratios']['bulk'] / row['ratios']['ceiling']:.2f} of it; "
                  "Parquet decoding is the rest)")
    args.json.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
