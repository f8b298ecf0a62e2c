"""Map-style data sets that training iterates: ``(float32 C x H x W image, float32 scalar target)``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit.data.preprocess import ChannelStats, apply, check_finite
from hpcvit.data.store import Store
from hpcvit.config import PreprocessSpec


class SourceRows:
    """Where each row of a store came from: the data set's files and each row's file and index in it."""

    def __init__(self, paths: list[str], starts: np.ndarray, source_rows: np.ndarray | None = None,
                 saved_in: Path | None = None):
        self.paths = [str(p) for p in paths]
        self.starts = np.asarray(starts, dtype=np.int64)
        """First store row of each file."""
        self._source_rows = source_rows
        self.saved_in = saved_in
        """The cache's ``columns.npz`` holding ``source_rows``: another process (a loader worker) reads them
        from it when it first needs them (a message), instead of receiving a row-long array pickled."""

    @property
    def source_rows(self) -> np.ndarray | None:
        """A cache's row -> the row of its source file (None: the store reads the files themselves)."""
        if self._source_rows is None and self.saved_in is not None:
            with np.load(self.saved_in) as z:
                self._source_rows = z["__source_row__"]
        return self._source_rows

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self.saved_in is not None:
            state["_source_rows"] = None
        return state

    def of(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """``file`` (path) and ``row`` (index in that file) of store ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        k = np.searchsorted(self.starts, rows, side="right") - 1
        in_file = rows - self.starts[k] if self.source_rows is None else np.asarray(self.source_rows)[rows]
        return {"file": np.array(self.paths, dtype=str)[k] if len(rows) else np.zeros(0, str),
                "row": in_file.astype(np.int64)}

    def describe(self, row: int) -> str:
        """Store ``row`` in messages: its file and its sample number in the data set."""
        found = self.of(np.array([row]))
        return f"{found['file'][0]} (sample {int(found['row'][0])} of the data set)"


class ImageDataset:
    """Map-style data set: ``(image float32 C x H x W, target float32 scalar)`` for rows of a store.

    ``__getitems__`` (a DataLoader with the default collate) reads the batch's rows sorted, in one pass per
    file chunk/row group, and preprocesses the batch at once; over a preprocessed cache it returns views that
    the collate copies once. :meth:`batch_arrays` reads a whole batch as arrays (what
    :mod:`hpcvit.data.batches`, the training loader, fetches). With ``pre=None`` the images are returned as
    stored (a preprocessed cache). Pickles without open files, so it works with DataLoader worker processes
    and any sampler (DistributedSampler shards the indices).
    """

    def __init__(self, store: Store, rows: np.ndarray, targets: np.ndarray, pre: PreprocessSpec | None = None,
                 stats: ChannelStats | None = None, nonfinite: str = "zero",
                 where: Callable[[int], str] | None = None, scalars: np.ndarray | None = None,
                 source: SourceRows | None = None):
        self.store = store
        self.source = source
        """Each row's file and index in it (None: unknown)."""
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.float32)
        if len(self.rows) != len(self.targets):
            raise ValueError("rows and targets differ in length")
        self.pre, self.stats = pre, stats
        self.nonfinite = nonfinite
        """``data.nonfinite``, checked on images read raw (a preprocessed cache was checked when built)."""
        self.where = where or store.where
        self.scalars = None if scalars is None else np.asarray(scalars, dtype=np.float32)
        """``data.scalar_inputs`` of each sample, standardised: then a sample is ``((image, scalars), target)``."""

    def __len__(self) -> int:
        return len(self.rows)

    def _prep(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if self.pre is not None:
            check_finite(x, rows, self.where, self.nonfinite)
            apply(x, self.pre, self.stats)
        return x

    def __getitem__(self, i: int):
        import torch

        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        x = self._prep(self.store.read(self.rows[i:i + 1]), self.rows[i:i + 1])
        image = torch.from_numpy(x[0])
        inputs = image if self.scalars is None else (image, torch.from_numpy(self.scalars[i].copy()))
        return inputs, torch.tensor(float(self.targets[i]), dtype=torch.float32)

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
            images = [torch.from_numpy(view(r)) for r in rows.tolist()]
        else:
            xt = torch.from_numpy(self._decoded(rows))
            images = [xt[k] for k in range(len(idx))]
        if self.scalars is None:
            return [(images[k], yt[k]) for k in range(len(idx))]
        st = torch.from_numpy(self.scalars[idx])
        return [((images[k], st[k]), yt[k]) for k in range(len(idx))]

    def read_batch(self, indices: list[int]) -> tuple[Any, Any]:
        """A whole batch as tensors, ``(images, targets)`` (``((images, scalars), targets)`` with scalar inputs):
        one indexing operation over a preprocessed cache, one sorted read otherwise; no per-sample objects."""
        import torch

        x, y, s = self.batch_arrays(indices)
        y = torch.from_numpy(y)
        if s is None:
            return torch.from_numpy(x), y
        return (torch.from_numpy(x), torch.from_numpy(s)), y

    def batch_arrays(self, indices: list[int] | np.ndarray,
                     out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(images, targets, scalars or None)`` of samples ``indices`` in their order, as new arrays (the
        images written into ``out`` when given): one gather over a preprocessed cache, one sorted read otherwise."""
        idx = np.asarray(indices, dtype=np.int64)
        idx = np.where(idx < 0, idx + len(self), idx)
        rows = self.rows[idx]
        if self.pre is None and hasattr(self.store, "take"):
            x = self.store.take(rows, out)
        elif out is None:
            x = self._decoded(rows)
        else:
            x = out
            np.copyto(out, self._decoded(rows))
        s = None if self.scalars is None else self.scalars[idx]
        return x, self.targets[idx], s

    def _decoded(self, rows: np.ndarray) -> np.ndarray:
        """The preprocessed images of store ``rows`` in their order: one sorted read of the distinct rows."""
        uniq, inverse = np.unique(rows, return_inverse=True)
        raw = self.store.read(uniq)
        if len(uniq) != len(rows) or not np.array_equal(uniq, rows):
            raw = raw[inverse]
        return self._prep(raw, rows)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images (preprocessed) and targets in memory; for small sets and tests."""
        order = np.argsort(self.rows, kind="stable")
        x = np.empty((len(self), *self.store.shape), dtype=np.float32)
        x[order] = self.store.read(self.rows[order])
        return self._prep(x, self.rows), self.targets.copy()


class ArrayDataset:
    """Map-style data set over preprocessed NCHW arrays in memory; returns (image, target) as torch tensors."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        import torch

        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]
