"""Bulk decode of the readers (what ``hpcvit data convert`` and the raw cache build use) against direct readers.

Files are written in a temporary folder:

parquet-rg1     jets of 3 x 125 x 125 doubles in the published layout, one jet per row group
parquet-rg500   the same jets in row groups of 500
hdf5-32x32x2    electron/photon layout: ``X`` N x 32 x 32 x 2 float32 (contiguous), ``y``
hdf5-125x125x8  ``X`` N x 125 x 125 x 8 float32 in chunks of 64 images

For each, the hpcvit path is ``store.iter_read(all rows, block)`` with the block the raw cache build uses
(the yielded blocks are not copied). The baselines, in the same process:

Parquet   per row group ``ParquetFile.read_row_group(g, columns=[key], use_threads=False)``, the three list
          levels flattened, the values copied into a reused block of the same size (no checks of list lengths)
HDF5      ``Dataset.read_direct`` of the same slabs (the chunk-aligned slabs hpcvit reads) into one reused
          slab in the file's own layout (N, H, W, C): no reorder to channels-first

So both produce the rows a block at a time in one buffer that each pass allocates and reuses (what the cache
build writes out); before timing, one pass of each is copied out and compared image for image. The two take
turns ``--repeats`` times; medians; ratio = baseline seconds / hpcvit seconds (1.0: as fast as the
baseline). For HDF5 a third timing, the reorder alone (hpcvit's channels-last -> channels-first copy of the
images, already in memory, into a channels-first block), bounds any reader with channels-first output:
cap = baseline / reorder; a fourth, numpy's strided copy of the same (``np.copyto`` of ``np.moveaxis``),
is what hpcvit uses where its compiled copy is not built (``HPCVIT_NO_KERNELS=1`` runs hpcvit that way).
Target: ratio >= 0.9 for every file.

Usage: python benchmarks/decode.py [--jets 600] [--egamma 20000] [--wide 256] [--repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TARGET = 0.9


def sparse_jets(n: int, seed: int = 0, shape: tuple[int, int, int] = (3, 125, 125)) -> np.ndarray:
    """Sparse calorimeter-like images: ~5 % of the pixels non-zero."""
    rng = np.random.default_rng(seed)
    return rng.exponential(1.0, (n, *shape)) * (rng.random((n, *shape)) < 0.05)


def write_parquet(path: Path, x: np.ndarray, row_group_size: int) -> Path:
    import pyarrow.parquet as pq

    from hpcvit.data.parquet import jets_table

    writer = None
    step = max(100, row_group_size)
    try:
        for i in range(0, len(x), step):
            table = jets_table(x[i:i + step], {"y": (np.arange(i, i + len(x[i:i + step])) % 2).astype(np.float64)})
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="snappy")
            writer.write_table(table, row_group_size=row_group_size)
    finally:
        if writer is not None:
            writer.close()
    return path


def write_hdf5(path: Path, x_nhwc: np.ndarray, chunks: tuple[int, ...] | None) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        if chunks:
            chunks = (min(chunks[0], len(x_nhwc)), *chunks[1:])
        f.create_dataset("X", data=x_nhwc, chunks=chunks)
        f.create_dataset("y", data=(np.arange(len(x_nhwc)) % 2).astype(np.float32))
    return path


def direct_parquet(path: Path, block: tuple[int, ...], keep: np.ndarray | None = None) -> None:
    """The 30-line reader: one row group at a time, flattened into a buffer of shape ``block`` (reused as it
    fills); each full block is copied into ``keep`` when given (the check, not timed)."""
    import pyarrow.parquet as pq

    buf = np.empty(block, dtype=np.float32)
    pf = pq.ParquetFile(path)
    key = pf.schema_arrow.names[0]
    pos = done = 0
    for g in range(pf.metadata.num_row_groups):
        col = pf.read_row_group(g, columns=[key], use_threads=False).column(0)
        for chunk in col.chunks:
            vals = chunk.flatten().flatten().flatten().to_numpy(zero_copy_only=False)
            for i in range(0, len(chunk), len(buf)):  # a group larger than the block fills several
                n = min(len(buf), len(chunk) - i)
                if pos + n > len(buf):
                    if keep is not None:
                        keep[done:done + pos] = buf[:pos]
                    done, pos = done + pos, 0
                row = int(np.prod(buf.shape[1:]))
                buf[pos:pos + n] = vals[i * row:(i + n) * row].reshape(n, *buf.shape[1:])
                pos += n
    if keep is not None:
        keep[done:done + pos] = buf[:pos]


def direct_hdf5(path: Path, block: tuple[int, ...], keep: np.ndarray | None = None) -> None:
    """``read_direct`` of ``block[0]``-row slabs into one slab of shape ``block`` (reused), in the file's
    layout; copied into ``keep`` when given (the check, not timed)."""
    import h5py

    slab = np.empty(block, dtype=np.float32)
    with h5py.File(path, "r") as f:
        d = f["X"]
        step = len(slab)
        for lo in range(0, d.shape[0], step):
            hi = min(lo + step, d.shape[0])
            d.read_direct(slab, np.s_[lo:hi], np.s_[0:hi - lo])
            if keep is not None:
                keep[lo:hi] = slab[:hi - lo]


def hpcvit_bulk(store: Any, block: int, keep: np.ndarray | None = None) -> None:
    """The raw cache build's read: every row in file order, a block at a time (copied into ``keep`` when
    given: the check, not timed)."""
    for rows, x in store.iter_read(np.arange(store.n), block=block):
        if keep is not None:
            keep[rows[0]:rows[0] + len(rows)] = x
    store.close()


def cache_block(shape: tuple[int, ...]) -> int:
    """The block of the raw cache build (``hpcvit.data.cache._decode_part``)."""
    return max(1, min(256, (64 << 20) // (int(np.prod(shape)) * 4)))


def timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def compare(name: str, ours: Callable[[], None], base: Callable[[], None], repeats: int,
            check: Callable[[], bool], floors: dict[str, Callable[[], None]] | None = None) -> dict[str, Any]:
    """Alternating repeats of ``ours``, ``base`` and each of ``floors`` (the reorder alone: ``reorder``
    with hpcvit's copy, ``reorder_numpy`` with numpy's)."""
    if not check():  # also warms the page cache and both code paths
        raise RuntimeError(f"{name}: hpcvit and the baseline read different images")
    floors = floors or {}
    t_ours, t_base = [], []
    t_floors: dict[str, list[float]] = {k: [] for k in floors}
    for _ in range(repeats):
        t_ours.append(timed(ours))
        t_base.append(timed(base))
        for k, fn in floors.items():
            t_floors[k].append(timed(fn))
    a, b = statistics.median(t_ours), statistics.median(t_base)
    ratio = b / a
    line = (f"{name:<16}hpcvit {a * 1e3:8.1f} ms  baseline {b * 1e3:8.1f} ms  ratio {ratio:.2f}  "
            f"(range {min(t_base) / max(t_ours):.2f}-{max(t_base) / min(t_ours):.2f})")
    out = {"hpcvit_s": a, "baseline_s": b, "ratio": ratio, "hpcvit_all_s": t_ours, "baseline_all_s": t_base}
    for k, times in t_floors.items():
        f = statistics.median(times)
        out.update({f"{k}_s": f, f"{k}_cap": b / f})
        line += (f"; reorder alone {f * 1e3:.1f} ms: cap {b / f:.2f}" if k == "reorder" else
                 f" ({k.removeprefix('reorder_')}'s {b / f:.2f})")
    print(line, flush=True)
    return out


def bench_parquet(name: str, path: Path, repeats: int) -> dict[str, Any]:
    from hpcvit.data.parquet import ParquetStore

    store = ParquetStore([path], "X")
    block = cache_block(store.shape)
    buf = (block, *store.shape)

    def check() -> bool:
        mine, theirs = (np.empty((store.n, *store.shape), dtype=np.float32) for _ in range(2))
        hpcvit_bulk(store, block, mine)
        direct_parquet(path, buf, theirs)
        return np.array_equal(mine, theirs)

    out = compare(name, lambda: hpcvit_bulk(store, block), lambda: direct_parquet(path, buf), repeats, check)
    return {**out, "block": block}


def bench_hdf5(name: str, path: Path, x: np.ndarray, repeats: int) -> dict[str, Any]:
    """``x``: the file's images (N, H, W, C), for the check and the reorder alone."""
    from hpcvit.data.hdf5 import HDF5Store
    from hpcvit.data.reorder import to_channels_first

    store = HDF5Store([path], "X")
    block = cache_block(store.shape)
    step = store._block_rows(0)
    step = max(step, (block // step) * step)  # the slabs hpcvit's bulk path reads
    slab = (step, *x.shape[1:])
    dst = np.empty((step, *store.shape), dtype=np.float32)

    def check() -> bool:
        mine, theirs = np.empty((store.n, *store.shape), dtype=np.float32), np.empty_like(x)
        hpcvit_bulk(store, block, mine)
        direct_hdf5(path, slab, theirs)
        return np.array_equal(mine, np.moveaxis(theirs, 3, 1)) and np.array_equal(theirs, x)

    def reorder(copy: Callable[[np.ndarray, np.ndarray], None]) -> Callable[[], None]:
        def run() -> None:  # the images already in memory: what any channels-first reader must copy
            for lo in range(0, len(x), step):
                part = x[lo:lo + step]
                copy(part, dst[:len(part)])
        return run

    def numpy_copy(src: np.ndarray, out: np.ndarray) -> None:
        np.copyto(out, np.moveaxis(src, 3, 1))

    out = compare(name, lambda: hpcvit_bulk(store, block), lambda: direct_hdf5(path, slab), repeats, check,
                  {"reorder": reorder(to_channels_first), "reorder_numpy": reorder(numpy_copy)})
    return {**out, "slab_rows": step}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jets", type=int, default=600, help="jets of 3 x 125 x 125 per Parquet file")
    ap.add_argument("--egamma", type=int, default=20000, help="images of 32 x 32 x 2 in the HDF5 file")
    ap.add_argument("--wide", type=int, default=256, help="images of 125 x 125 x 8 in the chunked HDF5 file")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from hpcvit.data.reorder import KERNEL

    result: dict[str, Any] = {"target": TARGET, "repeats": args.repeats, "reorder": KERNEL}
    print(f"hpcvit's channels-last reorder: {KERNEL}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        x = sparse_jets(args.jets)
        for name, rg in (("parquet-rg1", 1), ("parquet-rg500", 500)):
            result[name] = bench_parquet(name, write_parquet(root / f"{name}.parquet", x, rg), args.repeats)
        del x
        for name, n, shape, chunks in (("hdf5-32x32x2", args.egamma, (2, 32, 32), None),
                                       ("hdf5-125x125x8", args.wide, (8, 125, 125), (64, 125, 125, 8))):
            x = np.ascontiguousarray(np.moveaxis(sparse_jets(n, 1, shape).astype(np.float32), 1, 3))
            result[name] = bench_hdf5(name, write_hdf5(root / f"{name}.h5", x, chunks), x, args.repeats)
            del x
    ok = all(result[k]["ratio"] >= TARGET for k in result if isinstance(result[k], dict))
    print(f"target: ratio >= {TARGET} for every file: {'PASS' if ok else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
