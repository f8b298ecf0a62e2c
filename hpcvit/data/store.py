"""The common reader interface: a lazily opened *store* of NCHW float32 images, addressed by global row.

A store (:class:`hpcvit.data.hdf5.HDF5Store`, :class:`hpcvit.data.parquet.ParquetStore`,
:class:`hpcvit.data.memmap.MemmapStore`) knows its files' layout from their metadata, opens them lazily in
each process that reads (so a store pickles to DataLoader workers without file handles), and reads sorted row
sets either at random (``read``) or in bulk (``iter_read``). Errors are :class:`DataError` s whose text is one
line naming the file (and row group or rows).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


class DataError(ValueError):
    """A data file is missing, unreadable or inconsistent; ``str()`` is one line naming the file.

    ``field`` names the spec field whose value the data contradict (``data.channels``, ``data.target_key``),
    so that checks before submission can point at its line in the spec.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


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

    def not_scalar(self, name: str) -> str | None:
        """Why ``name``, present in a file, is not a scalar column (one line naming the file), or None."""
        return None

    def column(self, name: str) -> np.ndarray:
        """A scalar column over all rows, as float64."""
        raise NotImplementedError

    def describe(self) -> list[dict[str, Any]]:
        """Per-file facts for ``hpcvit data inspect``."""
        return [{"path": str(p), "rows": r} for p, r in zip(self.paths, self.file_rows)]


def rows_per(mib: int, sample_shape: tuple[int, ...], itemsize: int = 4) -> int:
    """How many samples of ``sample_shape`` fit in ``mib`` MiB at ``itemsize`` bytes per value (at least one)."""
    return max(1, (mib << 20) // max(1, int(np.prod(sample_shape)) * itemsize))


def select_channels(channels: list[int] | None, n_file: int, where: str) -> list[int]:
    """The channel indices to keep of images with ``n_file`` channels (all when ``channels`` is None)."""
    if channels is None:
        return list(range(n_file))
    bad = [c for c in channels if not 0 <= c < n_file]
    if bad:
        raise DataError(f"{where}: data.channels {bad} out of range: the images have {n_file} channels",
                        field="data.channels")
    return list(channels)


MADE_BY = {"top_vs_qcd_n8000.parquet": "make data-top", "quark_gluon_n6000.parquet": "make data-qg",
           "_IMGCROPS_n8000_hpcvit.hdf5": "make data-egamma", "diphoton_mass_n4000_seed1.parquet": "make data-mass",
           "calo_hits_n20000_seed1.h5": "make data-hits"}
"""The shipped jobs' generated files (name endings) and the make target that writes each."""


def not_found(missing: list[str]) -> DataError:
    """The error for data files that do not exist, saying which ``make`` target writes those the jobs name."""
    targets = sorted({t for m in missing for end, t in MADE_BY.items() if m.endswith(end)})
    hint = f" (`{'`, `'.join(targets)}` writes {'them' if len(missing) > 1 else 'it'})" if targets else ""
    return DataError(f"file(s) not found: {', '.join(missing)}{hint}", field="data.paths")
