"""A memory-mapped ``x.npy`` (N, C, H, W) float32 as a store: what the training cache is read through.

Random reads (training) go through the mapping, sharing the page cache between processes; bulk passes
(``iter_read``: statistics, the preprocessed copy) and the cache's writer (:class:`RowWriter`) use plain
reads and writes at file offsets into buffers of one block, so a pass over a file of any size holds one block:
pages written or read through a mapping stay in the process's resident set until the kernel drops them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hpcvit.data.store import DataError, Store


class MemmapStore(Store):
    """Images of one ``x.npy`` (N, C, H, W) float32, memory-mapped read-only in each process."""

    format = "memmap"

    def __init__(self, path: Path):
        super().__init__()
        self.paths = [Path(path)]
        try:
            mm = np.load(self.paths[0], mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable cache array ({exc}); delete the cache directory") from None
        if mm.ndim != 4 or mm.dtype != np.float32:
            raise DataError(f"{path}: cache array is {mm.dtype} {mm.shape}, expected float32 (N, C, H, W)")
        self.n, self.shape, self.file_rows = int(mm.shape[0]), tuple(int(s) for s in mm.shape[1:]), [int(mm.shape[0])]
        self._offset = int(mm.offset)

    def _open(self, k: int) -> np.ndarray:
        # copy-on-write mapping: reads share the page cache, and a consumer writing into a returned view
        # (an in-place augmentation) gets private pages instead of changing the cache file
        return np.load(self.paths[0], mmap_mode="c")

    def view(self, row: int) -> np.ndarray:
        """Image ``row`` as a view into the mapping (no copy; the DataLoader's collate makes the one copy)."""
        return self._handle(0)[row]

    def take(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Images ``rows`` (any order) as one (len, C, H, W) array, new or ``out``: a single gather from the
        mapping."""
        rows = np.asarray(rows, dtype=np.int64)
        mm = self._handle(0)
        if out is not None:
            return gather_into(mm, rows, out)
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows) and np.all(np.diff(rows) == 1):
            return np.array(mm[int(rows[0]):int(rows[-1]) + 1])
        return np.take(mm, rows, axis=0)

    def close(self) -> None:
        self._handles = {}

    def read(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        mm = self._handle(0)
        run = len(rows) > 0 and rows[-1] - rows[0] + 1 == len(rows)
        if out is not None:
            np.copyto(out, mm[int(rows[0]):int(rows[-1]) + 1] if run else mm[rows])
            return out
        if run:  # a slice is a view of the mapping: copy it once
            return np.array(mm[int(rows[0]):int(rows[-1]) + 1], dtype=np.float32, copy=True)
        return np.asarray(mm[rows])  # fancy indexing already made a private copy

    def _read_file(self, k: int, local: np.ndarray, out: np.ndarray) -> None:
        self.read(local, out)

    def _iter_file(self, k: int, local: np.ndarray, block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Blocks of ``block`` rows read with ``os.preadv`` into one reused buffer (runs of consecutive rows
        in one call each), never touching the mapping."""
        row_bytes = int(np.prod(self.shape)) * 4
        buf = np.empty((max(1, min(block, len(local))), *self.shape), dtype=np.float32)
        fd = os.open(self.paths[0], os.O_RDONLY)
        try:
            for i in range(0, len(local), block):
                part = local[i:i + block]
                out = buf[:len(part)]
                cuts = np.flatnonzero(np.diff(part) != 1) + 1
                a = 0
                for b in [*cuts.tolist(), len(part)]:
                    _pread_into(fd, out[a:b], self._offset + int(part[a]) * row_bytes, self.paths[0])
                    a = b
                yield part, out
        finally:
            os.close(fd)

    def scalar_columns(self) -> list[str]:
        return []

    def column(self, name: str) -> np.ndarray:
        raise DataError(f"{self.paths[0]}: the image cache has no scalar columns")


def _pread_into(fd: int, out: np.ndarray, offset: int, path: Path) -> None:
    view = memoryview(out).cast("B")
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise DataError(f"{path}: cache array is shorter than its header says; delete the cache directory")
        done += got


def create_npy(path: Path, shape: tuple[int, ...]) -> int:
    """Create ``path`` as a float32 ``.npy`` of ``shape`` (numpy's header, data not yet written: a sparse
    file of the full size); return the offset of its data."""
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    offset = int(x.offset)
    del x
    return offset


class RowWriter:
    """Writes blocks of rows into a float32 ``.npy`` made by :func:`create_npy` with ``os.pwrite``: the
    process holds only the block it was given (a write through a mapping keeps every written page resident).
    ``close`` syncs the data to disk."""

    def __init__(self, path: Path, offset: int, sample_shape: tuple[int, ...]):
        self.path = Path(path)
        self.offset = offset
        self.row_bytes = int(np.prod(sample_shape)) * 4
        self.sample_shape = tuple(sample_shape)
        self.fd = os.open(self.path, os.O_WRONLY)

    def write(self, row: int, x: np.ndarray) -> None:
        """Write the rows ``x`` (n, *sample_shape) at row ``row``."""
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"{self.path}: rows of shape {x.shape[1:]}, expected {self.sample_shape}")
        view = memoryview(np.ascontiguousarray(x, dtype=np.float32)).cast("B")
        pos = self.offset + row * self.row_bytes
        done = 0
        while done < len(view):  # a write may be partial (Linux caps one at about 2 GiB)
            done += os.pwrite(self.fd, view[done:], pos + done)

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.fsync(self.fd)
            finally:
                os.close(self.fd)
                self.fd = -1

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gather_into(images: np.ndarray, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``images[rows]`` (any order, repeats allowed) written into ``out`` by one gather."""
    if len(rows) and (rows.min() < 0 or rows.max() >= len(images)):
        raise IndexError(f"rows out of range 0..{len(images) - 1}")
    # bounds checked above: with mode="raise" numpy gathers into a temporary and copies that into ``out``
    return np.take(images, rows, axis=0, out=out, mode="clip")
