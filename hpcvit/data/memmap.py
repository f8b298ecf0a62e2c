"""A memory-mapped ``x.npy`` (N, C, H, W) float32 as a store: what the training cache is read through."""

from __future__ import annotations

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

    def _open(self, k: int) -> np.ndarray:
        # copy-on-write mapping: reads share the page cache, and a consumer writing into a returned view
        # (an in-place augmentation) gets private pages instead of changing the cache file
        return np.load(self.paths[0], mmap_mode="c")

    def view(self, row: int) -> np.ndarray:
        """Image ``row`` as a view into the mapping (no copy; the DataLoader's collate makes the one copy)."""
        return self._handle(0)[row]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Images ``rows`` (any order) as one new (len, C, H, W) array: a single gather from the mapping."""
        rows = np.asarray(rows, dtype=np.int64)
        mm = self._handle(0)
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

    def scalar_columns(self) -> list[str]:
        return []

    def column(self, name: str) -> np.ndarray:
        raise DataError(f"{self.paths[0]}: the image cache has no scalar columns")
