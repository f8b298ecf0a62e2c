"""The float32 memory-mapped cache that training reads (``hpcvit data convert``, or built on first use).

Two levels under ``data.cache_dir``:

* ``raw-<key>/``: the selected samples (cuts applied, channels selected) as ``x.npy`` (N, C, H, W) float32,
  plus every scalar column of those samples (``columns.npz``, with the source row numbers) and ``meta.json``.
  The key hashes the source files' identity (absolute path, size, mtime, and a hash of their first and last
  64 KiB), the format, image column, channels, layout, cuts and ``max_samples``. Decoding Parquet happens here,
  once. Channel statistics of a training split are stored beside it (``stats-<key>.json``).
* ``pre-<key>/``: ``x.npy`` preprocessed with given statistics; the key adds the preprocessing settings and
  the statistics. Made from the raw level at memory speed, so another preprocessing or split costs no decode.

Each directory is built under an exclusive lock (``.locks/<name>.lock``, ``fcntl.flock``) into a temporary directory
that is renamed into place, so concurrent tasks (array tasks, torchrun ranks) wait for one build and never see a
partial cache. A cache whose sources changed gets a new key, so it is rebuilt; old ones are left for the user
to delete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit import fsio
from hpcvit.data.formats import open_store
from hpcvit.data.memmap import MemmapStore, RowWriter, create_npy
from hpcvit.data.preprocess import ChannelStats, apply, channel_stats, check_finite, stats_block
from hpcvit.data.selection import select
from hpcvit.data.store import DataError, Store, rows_per
from hpcvit.parallel import spawn_map
from hpcvit.config import DataSpec, PreprocessSpec, data_fields

log = logging.getLogger(__name__)

CACHE_VERSION = 2
_PROBE = 1 << 16
PROBE_BLOCKS = 16
"""Blocks of 64 KiB, spread evenly over each source file (first and last included), whose bytes the key hashes."""


def file_identity(path: Path) -> dict[str, Any]:
    """What identifies a source file cheaply: path, size, mtime and a hash of :data:`PROBE_BLOCKS` sampled
    64 KiB blocks (the whole file when it is smaller than them)."""
    path = Path(path).resolve()
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= PROBE_BLOCKS * _PROBE:
            h.update(f.read())
        else:
            for k in range(PROBE_BLOCKS):
                f.seek(k * (st.st_size - _PROBE) // (PROBE_BLOCKS - 1))
                h.update(f.read(_PROBE))
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "probe": h.hexdigest()[:16]}


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def columns_digest(spec: DataSpec, paths: list[Path]) -> str:
    """A hash of every scalar column's values (labels, pT, ...): reading them costs a column read per file, so a
    changed label changes the key even when the file keeps its size and modification time."""
    store = open_store(spec, paths)
    try:
        h = hashlib.sha256()
        for name in store.scalar_columns():
            h.update(name.encode() + b"\0" + np.ascontiguousarray(store.column(name), dtype=np.float64).tobytes())
        return h.hexdigest()[:16]
    finally:
        store.close()


def raw_key(spec: DataSpec, paths: list[Path]) -> str:
    """The raw cache's key: the selection fields of the spec, each source's identity (size, mtime, sampled
    blocks) and the values of every scalar column. What it misses, an image byte changed outside the sampled
    blocks in a file that kept its size and mtime, ``hpcvit data convert --verify`` finds (full hashes)."""
    # max_samples takes from every file (hpcvit.data.selection.spread): a cache of the first N in file order,
    # made before, must not be taken for it
    spread = {"max_samples_from": "each file"} if spec.max_samples else {}
    return digest({"version": CACHE_VERSION, "sources": [file_identity(p) for p in paths],
                    "columns": columns_digest(spec, paths), **data_fields(spec, "selection"), **spread})


def pre_key(raw_dir: Path, pre: PreprocessSpec, stats: ChannelStats | None, nonfinite: str = "zero") -> str:
    return digest({"version": CACHE_VERSION, "raw": raw_dir.name, "pre": pre.model_dump(exclude={"stats_samples"}),
                    "stats": stats.to_dict() if stats is not None else None, "nonfinite": nonfinite})


# -- locking and atomic publication --------------------------------------------------------------------------
def _lock(cache_dir: Path, name: str):
    """The lock of one cache entry (kept in ``.locks/``: removing it would race waiters)."""
    return fsio.file_lock(cache_dir / ".locks" / f"{name}.lock", what=f"the cache {cache_dir / name}")


def locked_build(cache_dir: Path, name: str, build: Callable[[Path], None]) -> Path:
    """Return ``cache_dir/name``, building it with ``build(tmp_dir)`` under a lock if it does not exist."""
    final = cache_dir / name
    if (final / "meta.json").exists():
        return final
    with _lock(cache_dir, name):
        if (final / "meta.json").exists():
            return final
        for stale in cache_dir.glob(f".{name}.*"):  # temp folders of crashed builds: we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = fsio.temp_path(final)
        tmp.mkdir()
        try:
            build(tmp)
            if final.exists():  # an incomplete directory (no meta.json) from an older crash
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsio.fsync_dir(cache_dir, strict=False)  # best effort: some file systems refuse fsync on a folder
        return final


def _progress(total: int, description: str, enabled: bool):
    """A rich progress bar (enabled on the CLI) or a no-op; yields ``advance(n)``."""
    if not enabled:
        class _Null:
            def __enter__(self):
                return lambda n: None

            def __exit__(self, *a):
                return False
        return _Null()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class _Bar:
        def __enter__(self):
            self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), TimeRemainingColumn())
            self.p.start()
            task = self.p.add_task(description, total=total)
            return lambda n: self.p.advance(task, n)

        def __exit__(self, *a):
            self.p.stop()
            return False
    return _Bar()


@dataclass
class RawCache:
    """A built ``raw-<key>`` directory."""

    dir: Path
    meta: dict[str, Any]
    columns: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return int(self.meta["n"])

    def store(self) -> MemmapStore:
        return MemmapStore(self.dir / "x.npy")

    @property
    def columns_file(self) -> Path:
        return self.dir / "columns.npz"


def decode_workers(n_rows: int, workers: int | None) -> int:
    """Processes decoding a raw cache: the usable cores (at most 16), at least 512 samples each."""
    if workers is None:
        try:
            workers = len(os.sched_getaffinity(0))
        except AttributeError:
            workers = os.cpu_count() or 1
        workers = min(workers, 16)
    return max(1, min(workers, n_rows // 512))


def _decode_worker_init() -> None:
    try:
        import pyarrow

        pyarrow.set_cpu_count(1)  # the processes are the parallelism
    except ImportError:
        pass


def _decode_part(store: Store, rows: np.ndarray, start: int, path: Path, offset: int, advance=None) -> int:
    """Decode sorted ``rows`` of ``store`` into rows ``start...`` of the ``.npy`` at ``path`` (data at
    ``offset``), one block at a time."""
    pos = start
    block = min(256, rows_per(64, store.shape))
    with RowWriter(path, offset, store.shape) as out:
        for got, xb in store.iter_read(rows, block=block):
            out.write(pos, xb)
            pos += len(got)
            if advance is not None:
                advance(len(got))
    if pos - start != len(rows):
        raise DataError(f"{store.paths[0]}: read {pos - start} of {len(rows)} selected samples")
    store.close()
    return len(rows)


def _decode_part_job(args: tuple[Store, np.ndarray, int, Path, int]) -> int:
    return _decode_part(*args)


def _build_raw(spec: DataSpec, paths: list[Path], progress: bool, tmp: Path, workers: int | None = None) -> None:
    t0 = time.monotonic()
    store = open_store(spec, paths)
    names = store.scalar_columns()
    rows, cols = select(store, spec, names)
    offset = create_npy(tmp / "x.npy", (len(rows), *store.shape))
    store.close()
    n_proc = decode_workers(len(rows), workers)
    with _progress(len(rows), f"decoding {len(rows)} samples ({n_proc} process{'es' if n_proc > 1 else ''})",
                   progress) as advance:
        if n_proc == 1:
            _decode_part(store, rows, 0, tmp / "x.npy", offset, advance)
        else:
            bounds = np.linspace(0, len(rows), 4 * n_proc + 1).astype(np.int64)
            parts = [(store, rows[a:b], int(a), tmp / "x.npy", offset)
                     for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
            for got in spawn_map(_decode_part_job, parts, n_proc, ordered=False, initializer=_decode_worker_init,
                                 what="decode"):
                advance(got)
    np.savez(tmp / "columns.npz", __source_row__=rows, **cols)
    file_of = store.file_index(rows)
    meta = {
        "version": CACHE_VERSION, "n": int(len(rows)), "n_source": int(store.n), "shape": list(store.shape),
        "decode_processes": n_proc,
        "format": store.format, "sources": [{**file_identity(p), "sha256": fsio.sha256_file(p)} for p in paths],
        "rows_per_file": [int(np.sum(file_of == k)) for k in range(len(paths))],
        "file_rows": [int(r) for r in store.file_rows],
        "input_key": spec.input_key, "channels": spec.channels, "cuts": spec.cuts, "max_samples": spec.max_samples,
        "columns": names, "build_seconds": round(time.monotonic() - t0, 2), "host": socket.gethostname(),
    }
    store.close()
    fsio.write_json(tmp / "meta.json", meta)
    log.info("cached %d samples of %s in %.1f s", len(rows), paths[0], meta["build_seconds"])


def verify_raw(spec: DataSpec, paths: list[Path]) -> list[str]:
    """Compare every source's full SHA-256 with the one recorded when its raw cache was built; a cache whose
    sources differ is deleted (the next use rebuilds it). Returns what differed (empty: the cache is true)."""
    cache_dir = Path(spec.cache_dir).expanduser().resolve()
    d = cache_dir / f"raw-{raw_key(spec, paths)}"
    if not (d / "meta.json").exists():
        return []
    with _lock(cache_dir, d.name):
        meta = json.loads((d / "meta.json").read_text())
        changed = [f"{s['path']}: content changed since the cache was built (size and mtime kept)"
                   for s in meta["sources"] if fsio.sha256_file(Path(s["path"])) != s.get("sha256")]
        if changed:
            shutil.rmtree(d)
    return changed


def ensure_raw(spec: DataSpec, paths: list[Path], progress: bool = False, workers: int | None = None) -> RawCache:
    """The raw cache of ``spec``'s selection of ``paths``, built (once, under a lock) if missing, decoding
    in ``workers`` processes (default: the usable cores, at most 16; at least 512 samples each)."""
    if spec.cache_dir is None:
        raise ValueError("data.cache_dir is not set")
    cache_dir = Path(spec.cache_dir).expanduser().resolve()
    name = f"raw-{raw_key(spec, paths)}"
    d = locked_build(cache_dir, name, lambda tmp: _build_raw(spec, paths, progress, tmp, workers))
    try:
        meta = json.loads((d / "meta.json").read_text())
        with np.load(d / "columns.npz") as z:
            columns = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{d}: damaged cache ({exc}); delete the directory to rebuild it") from None
    return RawCache(d, meta, columns)


def ensure_stats(raw: RawCache, pre: PreprocessSpec, train_pos: np.ndarray, nonfinite: str = "zero",
                 where: Callable[[int], str] | None = None) -> ChannelStats:
    """Channel statistics of the training rows ``train_pos`` of a raw cache (stored beside it); with
    ``nonfinite="error"`` a NaN/inf pixel is an error naming ``where(row)``."""
    key = digest({"train": hashlib.sha256(np.ascontiguousarray(train_pos, dtype=np.int64).tobytes()).hexdigest(),
                   "zero_suppress": pre.zero_suppress})
    path = raw.dir / f"stats-{key}.json"

    def load() -> ChannelStats | None:
        try:
            return ChannelStats.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError):
            return None

    stats = load()
    if stats is None:
        with _lock(raw.dir.parent, f"{raw.dir.name}-stats-{key}"):  # ranks wait for one computation
            stats = load()
            if stats is None:
                stats = channel_stats(_batches(raw.store(), train_pos, pre.stats_samples, nonfinite, where), pre)
                fsio.write_json(path, stats.to_dict())
    return stats


def _batches(store: Store, rows: np.ndarray, size: int, nonfinite: str = "zero",
             where: Callable[[int], str] | None = None) -> Iterator[np.ndarray]:
    """Batches of ``size`` sorted rows (at most 256 MiB of images each), each read and yielded in pieces of
    :func:`stats_block` rows: :func:`channel_stats` takes a batch in such slices, so the statistics are
    those of whole batches while one piece is in memory."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    limit = rows_per(256, store.shape)
    size = max(1, min(size, limit))
    step = stats_block(store.shape)
    for i in range(0, len(rows), size):
        for got, x in store.iter_read(rows[i:i + size], block=step):
            check_finite(x, got, where or store.where, nonfinite)
            yield x


def ensure_preprocessed(raw: RawCache, pre: PreprocessSpec, stats: ChannelStats | None, progress: bool = False,
                        nonfinite: str = "zero", where: Callable[[int], str] | None = None) -> Path:
    """``x.npy`` of the raw cache preprocessed with ``stats``, built (once, under a lock) if missing; with
    ``nonfinite="error"`` a NaN/inf pixel stops the build naming ``where(row)``."""
    name = f"pre-{pre_key(raw.dir, pre, stats, nonfinite)}"

    def build(tmp: Path) -> None:
        t0 = time.monotonic()
        src = raw.store()
        offset = create_npy(tmp / "x.npy", (src.n, *src.shape))
        block = rows_per(64, src.shape)
        with _progress(src.n, "preprocessing", progress) as advance, RowWriter(tmp / "x.npy", offset,
                                                                              src.shape) as out:
            for rows, b in src.iter_read(np.arange(src.n), block=block):
                check_finite(b, rows, where or src.where, nonfinite)
                out.write(int(rows[0]), apply(b, pre, stats))
                advance(len(b))
        fsio.write_json(tmp / "meta.json", {"version": CACHE_VERSION, "raw": raw.dir.name, "n": src.n,
                                        "shape": list(src.shape), "preprocessing": pre.model_dump(),
                                        "stats": stats.to_dict() if stats else None,
                                        "build_seconds": round(time.monotonic() - t0, 2)})

    return locked_build(raw.dir.parent, name, build) / "x.npy"
