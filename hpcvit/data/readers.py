"""The common reader interface (a lazily opened *store* of NCHW float32 images), event selection, targets and
the map-style data set training iterates.

A store (:class:`hpcvit.data.hdf5.HDF5Store`, :class:`hpcvit.data.parquet.ParquetStore`,
:class:`hpcvit.data.cache.MemmapStore`) knows its files' layout from their metadata, opens them lazily in each
process that reads (so a store pickles to DataLoader workers without file handles), and reads sorted row sets
either at random (``read``) or in bulk (``iter_read``). Errors are :class:`DataError` s whose text is one line
naming the file (and row group or rows).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit.data.preprocess import ChannelStats, apply
from hpcvit.spec import DataSpec, PreprocessSpec

_ABS = re.compile(r"^abs\(\s*([^()\s]+)\s*\)$")


class DataError(ValueError):
    """A data file is missing, unreadable or inconsistent; ``str()`` is one line naming the file."""


class Store:
    """Images of one data set (several files read as one), addressed by global row number.

    Subclasses set ``paths``, ``n``, ``shape`` (C, H, W after channel selection) and ``file_rows`` and
    implement ``_read_file``/``_iter_file`` plus the scalar-column accessors. File handles live in
    ``self._handles`` and are opened per process (``_pid``); pickling drops them.
    """

    format = "?"
    paths: list[Path]
    n: int
    shape: tuple[int, int, int]
    file_rows: list[int]

    def __init__(self) -> None:
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    # -- process-local handles ------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def _handle(self, k: int) -> Any:
        if self._pid != os.getpid():  # forked after opening: never share a handle across processes
            self._handles = {}
            self._pid = os.getpid()
        h = self._handles.get(k)
        if h is None:
            h = self._handles[k] = self._open(k)
        return h

    def _open(self, k: int) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        for h in self._handles.values():
            close = getattr(h, "close", None)
            if close is not None:
                close()
        self._handles = {}

    # -- row addressing -------------------------------------------------------------------------------------
    @property
    def file_start(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.file_rows)]).astype(np.int64)

    def file_index(self, rows: np.ndarray) -> np.ndarray:
        """Index into ``paths`` of the file holding each global row."""
        return np.searchsorted(self.file_start, np.asarray(rows, dtype=np.int64), side="right") - 1

    def where(self, row: int) -> str:
        """``path (row r of the file)`` for messages."""
        k = int(self.file_index(np.array([row]))[0])
        return f"{self.paths[k]} (row {row - int(self.file_start[k])})"

    def _split_by_file(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray, slice]]:
        """(file index, file-local rows, slice of ``rows``) for sorted global ``rows``."""
        start = self.file_start
        bounds = np.searchsorted(rows, start)
        for k in range(len(self.paths)):
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            if hi > lo:
                yield k, rows[lo:hi] - start[k], slice(lo, hi)

    # -- reading ----------------------------------------------------------------------------------------------
    def read(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Images of sorted, unique global ``rows`` as a new (len, C, H, W) float32 array (or into ``out``)."""
        rows = np.asarray(rows, dtype=np.int64)
        if out is None:
            out = np.empty((len(rows), *self.shape), dtype=np.float32)
        if len(rows) and (rows[0] < 0 or rows[-1] >= self.n):
            raise IndexError(f"rows out of range 0..{self.n - 1}")
        for k, local, sl in self._split_by_file(rows):
            self._read_file(k, local, out[sl])
        return out

    def iter_read(self, rows: np.ndarray, block: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Bulk read of sorted, unique global ``rows`` in file order: yields (global rows, images) of at most
        about ``block`` rows. The image array may be a reused buffer, valid until the next iteration."""
        rows = np.asarray(rows, dtype=np.int64)
        for k, local, _ in self._split_by_file(rows):
            for got_local, x in self._iter_file(k, local, block):
                yield got_local + self.file_start[k], x

    def _read_file(self, k: int, local: np.ndarray, out: np.ndarray) -> None:
        raise NotImplementedError

    def _iter_file(self, k: int, local: np.ndarray, block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(0, len(local), block):
            part = local[i:i + block]
            out = np.empty((len(part), *self.shape), dtype=np.float32)
            self._read_file(k, part, out)
            yield part, out

    # -- scalar columns ---------------------------------------------------------------------------------------
    def scalar_columns(self) -> list[str]:
        """Names of the numeric per-sample columns present in every file (targets, pt, m0, ...)."""
        raise NotImplementedError

    def column(self, name: str) -> np.ndarray:
        """A scalar column over all rows, as float64."""
        raise NotImplementedError

    def describe(self) -> list[dict[str, Any]]:
        """Per-file facts for ``hpcvit data inspect``."""
        return [{"path": str(p), "rows": r} for p, r in zip(self.paths, self.file_rows)]


def _channel_list(channels: list[int] | None, n_file: int, where: str) -> list[int]:
    if channels is None:
        return list(range(n_file))
    bad = [c for c in channels if not 0 <= c < n_file]
    if bad:
        raise DataError(f"{where}: data.channels {bad} out of range: the images have {n_file} channels")
    return list(channels)


def detect_format(path: Path) -> str:
    """``parquet`` or ``hdf5`` from the file's magic bytes (falling back to its extension)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror})") from None
    if head[:4] == b"PAR1":
        return "parquet"
    if head == b"\x89HDF\r\n\x1a\n":
        return "hdf5"
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".h5", ".hdf5", ".hdf"):
        return "hdf5"
    raise DataError(f"{path}: neither a Parquet nor an HDF5 file (starts with {head[:4]!r})")


def open_store(spec: DataSpec, paths: list[Path]) -> Store:
    """The reader for ``spec.format`` over ``paths`` (synthetic data sets are HDF5 files)."""
    for p in paths:
        if not Path(p).exists():
            raise DataError(f"{p}: file not found")
    if spec.format == "parquet":
        from hpcvit.data.parquet import ParquetStore

        return ParquetStore(paths, spec.input_key, spec.channels)
    from hpcvit.data.hdf5 import HDF5Store

    return HDF5Store(paths, spec.input_key, spec.channels, spec.layout, spec.hdf5_chunk_cache_mb)


def parse_cut(key: str) -> tuple[str, bool]:
    """``abs(col)`` -> (col, True); ``col`` -> (col, False)."""
    m = _ABS.match(key)
    return (m.group(1), True) if m else (key, False)


def cut_columns(spec: DataSpec) -> list[str]:
    return sorted({parse_cut(k)[0] for k in spec.cuts})


def selection_mask(columns: dict[str, np.ndarray], spec: DataSpec, n: int) -> np.ndarray:
    """Rows passing ``spec.cuts`` (``min <= v < max``; NaN fails every cut)."""
    mask = np.ones(n, dtype=bool)
    for key, (lo, hi) in spec.cuts.items():
        name, is_abs = parse_cut(key)
        v = columns[name]
        if is_abs:
            v = np.abs(v)
        with np.errstate(invalid="ignore"):
            if lo is not None:
                mask &= v >= lo
            if hi is not None:
                mask &= v < hi
    return mask


def read_columns(store: Store, names: list[str]) -> dict[str, np.ndarray]:
    have = store.scalar_columns()
    out = {}
    for name in names:
        if name not in have:
            raise DataError(f"{store.paths[0]}: no scalar column {name!r} (has: {', '.join(have) or 'none'})")
        out[name] = store.column(name)
    return out


def select_rows(store: Store, spec: DataSpec) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Global rows passing the cuts (first ``max_samples`` of them) and the target/cut columns of those rows."""
    cols = read_columns(store, sorted({spec.target_key, *cut_columns(spec)}))
    rows = np.flatnonzero(selection_mask(cols, spec, store.n)).astype(np.int64)
    if spec.max_samples is not None:
        rows = rows[:spec.max_samples]
    if len(rows) == 0:
        raise DataError(f"{store.paths[0]}: no samples pass the cuts {spec.cuts} (of {store.n})")
    return rows, {k: v[rows] for k, v in cols.items()}


def make_targets(raw: np.ndarray, spec: DataSpec, where: Any = None) -> np.ndarray:
    """float32 targets: the positive class as 1 (binary) or the values themselves (regression).

    ``where(i)`` names the file and row of the i-th value for messages.
    """
    raw = np.asarray(raw, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(raw))
    if len(bad) and (spec.task == "regression" or spec.positive_value is None):
        at = where(int(bad[0])) if where else f"row {int(bad[0])}"
        raise DataError(f"{at}: target {spec.target_key!r} is {raw[bad[0]]} ({len(bad)} non-finite targets)")
    if spec.task == "regression":
        return raw.astype(np.float32)
    if spec.positive_value is not None:
        return (raw == spec.positive_value).astype(np.float32)
    odd = np.flatnonzero((raw != 0) & (raw != 1))
    if len(odd):
        values = np.unique(raw)
        at = where(int(odd[0])) if where else f"row {int(odd[0])}"
        raise DataError(f"{at}: binary target {spec.target_key!r} is {raw[odd[0]]:g}, not 0/1 (values: "
                        f"{', '.join(f'{v:g}' for v in values[:8])}{' ...' if len(values) > 8 else ''}); "
                        "set data.positive_value")
    return raw.astype(np.float32)


class ImageDataset:
    """Map-style data set: ``(image float32 C x H x W, target float32 scalar)`` for rows of a store.

    ``__getitems__`` (used by the DataLoader for whole batches) reads the batch's rows sorted, in one pass per
    file chunk/row group, and preprocesses the batch at once; over a preprocessed cache it returns views that
    the DataLoader's collate copies once. With ``pre=None`` the images are returned as
    stored (a preprocessed cache). Pickles without open files, so it works with DataLoader worker processes
    and any sampler (DistributedSampler shards the indices).
    """

    def __init__(self, store: Store, rows: np.ndarray, targets: np.ndarray, pre: PreprocessSpec | None = None,
                 stats: ChannelStats | None = None):
        self.store = store
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.float32)
        if len(self.rows) != len(self.targets):
            raise ValueError("rows and targets differ in length")
        self.pre, self.stats = pre, stats

    def __len__(self) -> int:
        return len(self.rows)

    def _prep(self, x: np.ndarray) -> np.ndarray:
        if self.pre is not None:
            apply(x, self.pre, self.stats)
        return x

    def __getitem__(self, i: int):
        import torch

        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        x = self._prep(self.store.read(self.rows[i:i + 1]))
        return torch.from_numpy(x[0]), torch.tensor(float(self.targets[i]), dtype=torch.float32)

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, Any]]:
        import torch

        idx = np.asarray(indices, dtype=np.int64)
        idx = np.where(idx < 0, idx + len(self), idx)
        rows = self.rows[idx]
        yt = torch.from_numpy(self.targets[idx].copy())
        if self.pre is None and hasattr(self.store, "view"):
            # preprocessed cache: views into the (copy-on-write) mapping, which the DataLoader's collate copies
            # into the batch, so the batch costs one copy; a caller writing into these views would change what
            # this process reads later (``__getitem__`` returns a copy)
            view = self.store.view
            return [(torch.from_numpy(view(r)), yt[k]) for k, r in enumerate(rows.tolist())]
        uniq, inverse = np.unique(rows, return_inverse=True)
        x = self.store.read(uniq)
        if len(uniq) != len(rows) or not np.array_equal(uniq, rows):
            x = x[inverse]
        xt = torch.from_numpy(self._prep(x))
        return [(xt[k], yt[k]) for k in range(len(idx))]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images (preprocessed) and targets in memory; for small sets and tests."""
        order = np.argsort(self.rows, kind="stable")
        x = np.empty((len(self), *self.store.shape), dtype=np.float32)
        x[order] = self.store.read(self.rows[order])
        return self._prep(x), self.targets.copy()


def read_arrays(paths: list[Path], spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """All selected samples of ``paths`` as (NCHW float32 raw images, raw targets float32), in memory.

    For small data sets (tests, inspection); training reads lazily through :func:`hpcvit.data.build_datasets`.
    """
    store = open_store(spec, [Path(p) for p in paths])
    rows, cols = select_rows(store, spec)
    return store.read(rows), cols[spec.target_key].astype(np.float32)
