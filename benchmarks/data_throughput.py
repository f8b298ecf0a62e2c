"""Samples per second of the data readers against naive baselines, measured in one run.

Parquet (published layout: 3 x 125 x 125 nested lists, one jet per row group):
  naive      per sample: ``read_row_group`` + ``to_pylist()`` + ``np.asarray`` (a plain map-style Dataset);
             also reported: ``iter_batches(64)`` + ``to_pylist()`` + ``np.array`` (sequential, stronger)
  reader     hpcvit's Parquet reader: ``build_datasets`` without a cache, GSoC preprocessing, shuffled
             DataLoader with workers (random access by row group)
  bulk       the reader's sequential ``iter_read`` (what ``hpcvit data convert`` does), one process
  cache      the memory-mapped float32 cache (preprocessed copy), shuffled DataLoader with workers, and
             with 0 workers (batches stacked in the main process: no shared-memory pages per batch)
  cache-raw  the decoded cache with preprocessing in the workers (``cache_preprocessed: false``)
  input      the training loader over the preprocessed cache (:mod:`hpcvit.data.batches`: whole batches, one
             gather each, through a shared ring with workers), one loader over the epochs as training uses
             it, against a float32 memcpy of the same bytes (batch by batch from the mapping into one
             buffer, in this process) and against the per-sample DataLoader and the DataLoader's own batching
             of whole-batch reads; 0 and ``--workers`` workers
HDF5 (electron/photon layout: N x 32 x 32 x 2, lzf chunks of 1,024 samples as h5py writes by default):
  naive      h5py per-sample indexing in shuffled order with h5py's default chunk cache
  reader     hpcvit's HDF5 reader, shuffled DataLoader with workers (batched, chunk-aware reads)
  cache      the memory-mapped cache

Usage: python benchmarks/data_throughput.py [--jets 3000] [--photons 20000] [--workers 2] [--parquet FILE]
       [--input-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_parquet(path: Path, n: int, seed: int = 0) -> Path:
    """Sparse jet-like images (~300 lit pixels per channel) in the published layout, written in slices."""
    import pyarrow.parquet as pq

    from hpcvit.data.parquet import jets_table

    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, n, 200):
        m = min(200, n - start)
        x = np.zeros((m, 3, 125, 125))
        for c in range(3):
            idx = rng.integers(0, 125, size=(m, 300, 2))
            r = np.clip((idx[..., 0] - 62) // 3 + 62, 0, 124)  # concentrated around the centre
            k = np.clip((idx[..., 1] - 62) // 3 + 62, 0, 124)
            np.add.at(x, (np.repeat(np.arange(m), 300), c, r.ravel(), k.ravel()), rng.exponential(2.0, m * 300))
        table = jets_table(x, {"y": (rng.random(m) < 0.5).astype(float), "pt": rng.uniform(500, 650, m),
                               "m0": rng.uniform(0, 250, m)})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="snappy")
        writer.write_table(table, row_group_size=1)
    writer.close()
    return path


def make_hdf5(path: Path, n: int, seed: int = 0) -> Path:
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        d = f.create_dataset("X", shape=(n, 32, 32, 2), dtype=np.float32, chunks=(1024, 32, 32, 2), compression="lzf")
        for i in range(0, n, 4096):
            m = min(4096, n - i)
            d[i:i + m] = rng.exponential(1.0, (m, 32, 32, 2)) * (rng.random((m, 32, 32, 2)) < 0.2)
        f.create_dataset("y", data=(rng.random(n) < 0.5).astype(np.float32))
    return path


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def naive_parquet(path: Path, n: int) -> float:
    """What a plain map-style Dataset does: one row group per sample, ``to_pylist()``, ``np.asarray``."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    order = np.random.default_rng(0).permutation(pf.metadata.num_row_groups)[:n]
    t0 = time.perf_counter()
    for g in order:
        _ = np.asarray(pf.read_row_group(int(g), columns=["X_jets"]).column(0).to_pylist()[0], dtype=np.float32)
    return rate(len(order), time.perf_counter() - t0)


def naive_parquet_batched(path: Path, n: int) -> float:
    """A stronger baseline: ``iter_batches(64)`` + ``to_pylist()`` + ``np.array`` (sequential)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    t0 = time.perf_counter()
    got = 0
    for batch in pf.iter_batches(batch_size=64, columns=["X_jets"]):
        x = np.array(batch.column(0).to_pylist(), dtype=np.float32)
        got += len(x)
        if got >= n:
            break
    return rate(got, time.perf_counter() - t0)


def naive_hdf5(path: Path, n: int) -> float:
    import h5py

    with h5py.File(path, "r") as f:
        d = f["X"]
        order = np.random.default_rng(0).permutation(d.shape[0])[:n]
        t0 = time.perf_counter()
        for i in order:
            _ = np.moveaxis(d[int(i)], -1, 0).astype(np.float32)
        return rate(len(order), time.perf_counter() - t0)


def loader_rate(dataset, workers: int, batch_size: int = 64, repeats: int = 3, max_seconds: float = 8.0) -> float:
    """Shuffled DataLoader epochs over ``dataset``: median samples/s over ``repeats`` epochs, each timed from
    its first batch (worker start-up excluded) and cut after ``max_seconds`` (a slow path runs one epoch)."""
    import torch
    from torch.utils.data import DataLoader

    from hpcvit.training.workers import context

    g = torch.Generator().manual_seed(0)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, generator=g,
                        prefetch_factor=4 if workers else None, persistent_workers=workers > 0,
                        multiprocessing_context=context(workers))
    rates = []
    for _ in range(repeats):
        it = iter(loader)
        next(it)
        t0 = time.perf_counter()
        got = 0
        for xb, yb in it:
            assert xb.dtype == torch.float32
            got += len(xb)
            if time.perf_counter() - t0 > max_seconds:
                break
        rates.append(rate(got, time.perf_counter() - t0))
        if time.perf_counter() - t0 > max_seconds:
            break
    return float(np.median(rates))


def memcpy_pass(mapping, rows: np.ndarray, buf: np.ndarray) -> float:
    """The ceiling of cached input: ``rows``' bytes copied batch by batch (contiguous rows of the mapping, in
    the page cache) into one preallocated float32 buffer; samples/s."""
    bs = len(buf)
    lo, n = int(rows.min()), len(rows) - len(rows) % bs
    t0 = time.perf_counter()
    for i in range(0, n, bs):
        np.copyto(buf, mapping[lo + i:lo + i + bs])
    return rate(n, time.perf_counter() - t0)


class _GetitemsBatches:
    """The whole-batch read behind the DataLoader's own batching (``batch_size=64``, ``__getitems__``): the
    tensors a worker returns are copied into new shared memory and handed over per batch."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]):
        return self.dataset.read_batch(indices)


def cached_input(dataset, workers: int, batch_size: int = 64, epochs: int = 5) -> dict[str, float]:
    """Samples/s of the ways to feed training from ``dataset`` (the preprocessed cache) over the training
    sampler (shuffled), with 0 and ``workers`` workers, each epoch timed from its first batch and divided by a
    memcpy pass of the same bytes measured just before it (the machine's load changes), the ways taking turns
    epoch by epoch; medians over epochs.
    The training loader is one loader iterated each epoch, as the trainer does; the DataLoaders are fresh ones
    per epoch, as it made them before."""
    import torch
    from torch.utils.data import DataLoader

    from hpcvit.data.batches import BatchLoader, already_collated
    from hpcvit.training.sampler import ShardSampler
    from hpcvit.training.workers import context

    mapping = dataset.store.view(slice(None))
    buf = np.empty((batch_size, *dataset.store.shape), dtype=np.float32)
    memcpy_pass(mapping, dataset.rows, buf)  # maps the pages into this process
    sampler = ShardSampler(len(dataset), 0, 1, batch_size, seed=0)
    res: dict[str, float] = {}
    for w in sorted({0, workers}):
        persistent = BatchLoader(dataset, sampler, batch_size, w, persistent=True, context=context(w))
        makers = {  # workers from the trainer's fork server
            "batches": lambda p=persistent: p,
            "getitems": lambda w=w: DataLoader(_GetitemsBatches(dataset), batch_size=batch_size, sampler=sampler,
                                               num_workers=w, collate_fn=already_collated,
                                               multiprocessing_context=context(w)),
            "per_sample": lambda w=w: DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=w,
                                                 multiprocessing_context=context(w)),
        }
        rates: dict[str, list[float]] = {name: [] for name in makers}
        ceilings: dict[str, list[float]] = {name: [] for name in makers}
        for epoch in range(epochs):  # the ways interleaved epoch by epoch: each sees the same load
            for name, make in makers.items():
                sampler.set_epoch(epoch)
                ceilings[name].append(memcpy_pass(mapping, dataset.rows, buf))
                it = iter(make())
                next(it)
                t0 = time.perf_counter()
                got = 0
                for xb, _ in it:
                    assert xb.dtype == torch.float32
                    got += len(xb)
                rates[name].append(rate(got, time.perf_counter() - t0))
                del it
        persistent.close()
        for name in makers:
            res[f"{name}_w{w}"] = float(np.median(rates[name]))
            res[f"{name}_w{w}_memcpy"] = float(np.median(ceilings[name]))
            res[f"{name}_w{w}_ratio"] = float(np.median(np.array(rates[name]) / np.array(ceilings[name])))
        print(f"cached input, {w} workers: training loader {res[f'batches_w{w}']:7.0f} samples/s = "
              f"{res[f'batches_w{w}_ratio']:.2f} of memcpy ({res[f'batches_w{w}_memcpy']:.0f} samples/s); "
              f"DataLoader batching of whole-batch reads {res[f'getitems_w{w}_ratio']:.2f}; "
              f"per-sample + collate {res[f'per_sample_w{w}_ratio']:.2f}", flush=True)
    worst = min(res[f"batches_w{w}_ratio"] for w in sorted({0, workers}))
    print(f"target (cached input >= 0.7 of memcpy with 0 and {workers} workers): worst {worst:.2f}", flush=True)
    return res


def bulk_rate(store, rows: np.ndarray) -> float:
    t0 = time.perf_counter()
    got = 0
    for r, _ in store.iter_read(rows, block=256):
        got += len(r)
    return rate(got, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jets", type=int, default=3000, help="Parquet jets written (ignored with --parquet)")
    ap.add_argument("--photons", type=int, default=20000, help="HDF5 32x32x2 samples written")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--naive-samples", type=int, default=300, help="samples read by the (slow) naive Parquet paths")
    ap.add_argument("--parquet", type=Path, help="use this Parquet file instead of writing one")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--input-only", action="store_true",
                    help="only the cached training input against memcpy (Parquet cache of --jets jets)")
    args = ap.parse_args(argv)

    import torch

    from hpcvit.data import build_datasets
    from hpcvit.data.formats import open_store
    from hpcvit.config import DataSpec

    # a data benchmark: the main process only receives batches; one intra-op thread keeps torch's OpenMP pool
    # from spinning against the loader workers on a small machine (DataLoader workers use one thread anyway)
    torch.set_num_threads(1)

    tmp = Path(tempfile.mkdtemp(prefix="hpcvit-bench-"))
    res: dict[str, dict[str, float]] = {"parquet": {}, "hdf5": {}, "setup": {}}
    try:
        t0 = time.perf_counter()
        pq_path = args.parquet or make_parquet(tmp / "jets.parquet", args.jets)
        h5_path = None if args.input_only else make_hdf5(tmp / "photons.h5", args.photons)
        res["setup"] = {"write_s": round(time.perf_counter() - t0, 1), "cpus": os.cpu_count(),
                        "workers": args.workers, "parquet_mb": round(pq_path.stat().st_size / 1e6, 1)}
        print(f"data written in {res['setup']['write_s']} s ({pq_path}, {res['setup']['parquet_mb']} MB)", flush=True)

        # -- Parquet -----------------------------------------------------------------------------------------
        p = res["parquet"]
        spec = DataSpec(format="parquet", paths=[str(pq_path)], val_fraction=0.1)
        cached_spec = spec.model_copy(update={"cache_dir": str(tmp / "cache")})
        if args.input_only:
            res["input"] = cached_input(build_datasets(cached_spec, tmp).train, args.workers)
            if args.json:
                args.json.write_text(json.dumps(res, indent=1))
            return 0
        p["naive"] = naive_parquet(pq_path, args.naive_samples)
        print(f"parquet naive per row group:  {p['naive']:9.0f} samples/s  (read_row_group + to_pylist + np.asarray)",
              flush=True)
        p["naive_batched"] = naive_parquet_batched(pq_path, args.naive_samples)
        print(f"parquet naive batched:        {p['naive_batched']:9.0f} samples/s  (iter_batches(64) + to_pylist)",
              flush=True)
        store = open_store(spec, [pq_path])
        p["bulk"] = bulk_rate(store, np.arange(store.n))
        print(f"parquet reader bulk (1 proc): {p['bulk']:9.0f} samples/s  {p['bulk'] / p['naive']:6.1f}x naive", flush=True)
        t0 = time.perf_counter()
        direct = build_datasets(spec, tmp)
        p["stats_s"] = time.perf_counter() - t0
        p["reader"] = loader_rate(direct.train, args.workers)
        print(f"parquet reader DataLoader:    {p['reader']:9.0f} samples/s  {p['reader'] / p['naive']:6.1f}x naive "
              f"(+{p['stats_s']:.1f} s channel statistics)", flush=True)
        t0 = time.perf_counter()
        cached = build_datasets(cached_spec, tmp)
        p["convert_s"] = time.perf_counter() - t0
        p["convert_rate"] = rate(cached.info["n_selected"], p["convert_s"])
        p["cache"] = loader_rate(cached.train, args.workers)
        print(f"parquet cache (one-time build {p['convert_s']:.1f} s = {p['convert_rate']:.0f} samples/s, "
              f"{cached.info['n_selected']} samples, decode + statistics + preprocessed copy)", flush=True)
        print(f"parquet cache DataLoader:     {p['cache']:9.0f} samples/s  {p['cache'] / p['naive']:6.1f}x naive", flush=True)
        p["cache_in_process"] = loader_rate(cached.train, 0)
        print(f"parquet cache, 0 workers:     {p['cache_in_process']:9.0f} samples/s  "
              f"{p['cache_in_process'] / p['naive']:6.1f}x naive", flush=True)
        res["input"] = cached_input(cached.train, args.workers)
        raw = build_datasets(cached_spec.model_copy(update={"cache_preprocessed": False}), tmp)
        p["cache_raw"] = loader_rate(raw.train, args.workers)
        print(f"parquet raw cache + preproc:  {p['cache_raw']:9.0f} samples/s  {p['cache_raw'] / p['naive']:6.1f}x naive",
              flush=True)

        # -- HDF5 --------------------------------------------------------------------------------------------
        h = res["hdf5"]
        h["naive"] = naive_hdf5(h5_path, min(2000, args.photons))
        print(f"hdf5 naive per-sample h5py:   {h['naive']:9.0f} samples/s", flush=True)
        hspec = DataSpec(format="hdf5", paths=[str(h5_path)], val_fraction=0.1)
        hd = build_datasets(hspec, tmp)
        h["reader"] = loader_rate(hd.train, args.workers, batch_size=256)
        print(f"hdf5 reader DataLoader:       {h['reader']:9.0f} samples/s  {h['reader'] / h['naive']:6.1f}x naive",
              flush=True)
        hc = build_datasets(hspec.model_copy(update={"cache_dir": str(tmp / "cache")}), tmp)
        h["cache"] = loader_rate(hc.train, args.workers, batch_size=256)
        print(f"hdf5 cache DataLoader:        {h['cache']:9.0f} samples/s  {h['cache'] / h['naive']:6.1f}x naive",
              flush=True)
        for k in ("reader", "bulk", "cache", "cache_in_process", "cache_raw"):
            p[f"{k}_vs_naive"] = p[k] / p["naive"]
            p[f"{k}_vs_naive_batched"] = p[k] / p["naive_batched"]
        print(f"parquet cache vs the batched naive baseline: {p['cache_vs_naive_batched']:.1f}x; "
              f"reader {p['reader_vs_naive_batched']:.1f}x")
        for k in ("reader", "cache"):
            h[f"{k}_vs_naive"] = h[k] / h["naive"]
        best = max(p["cache"], p["cache_in_process"])
        print(f"target (Parquet via cache >= 2,000 samples/s and >= 50x naive): best cache path {best:.0f} samples/s, "
              f"{best / p['naive']:.1f}x the per-sample naive, {best / p['naive_batched']:.1f}x the batched naive")
        if args.json:
            args.json.write_text(json.dumps(res, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
