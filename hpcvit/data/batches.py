"""The training loader: whole batches of an :class:`ImageDataset`, each read by one indexing operation.

The batches are those of ``BatchSampler(sampler, batch_size, drop_last=False)``, the same (rows, order, last
partial batch) as a ``DataLoader(dataset, batch_size, sampler=sampler)``; the DataLoader runs with
``batch_size=None`` over them, so a fetch is a whole batch and nothing is collated.

With worker processes the images travel through a *ring*: shared-memory slots allocated once per loader, in
which a worker gathers batch ``b`` straight from the memory-mapped cache (slot ``b % slots``); the worker
returns only the slot number and the (small) targets. That saves the copy into a new shared-memory block per
batch, and its file-descriptor hand-over, that a tensor returned by a worker costs. The ring holds every batch
the DataLoader can have in flight (``prefetch_factor`` per worker) plus :data:`HELD` taken by the consumer, so
a batch's images stay valid until ``HELD - 1`` further batches have been taken; with ``pin_memory`` they are
copied into pinned memory as they are taken (what the DataLoader's pinning would do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from hpcvit.data.dataset import ImageDataset

HELD = 2
"""Batches a consumer may hold at once (the one in use and the one before it, as a ``for`` loop does)."""

PREFETCH = 2
"""Batches in flight per worker (the DataLoader's default ``prefetch_factor``)."""


class NumberedBatches(Sampler[tuple[int, list[int]]]):
    """``(number, indices)`` of each batch of ``BatchSampler(sampler, batch_size, drop_last=False)``."""

    def __init__(self, sampler: Any, batch_size: int):
        self.batches = BatchSampler(sampler, batch_size, drop_last=False)

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        return enumerate(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchFetch:
    """What the DataLoader indexes with ``(number, indices)``: the whole batch, or its ring slot with workers."""

    def __init__(self, dataset: ImageDataset, indices: np.ndarray | None = None, ring: torch.Tensor | None = None):
        self.dataset = dataset
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        """Positions in ``dataset`` of this loader's samples (a subset); None for all of them."""
        self.ring = ring

    def __len__(self) -> int:
        return len(self.dataset) if self.indices is None else len(self.indices)

    def __getitem__(self, item: tuple[int, list[int]]) -> Any:
        number, idx = item
        if self.indices is not None:
            idx = self.indices[np.asarray(idx, dtype=np.int64)]
        if self.ring is None:
            return self.dataset.read_batch(idx)
        slot = number % len(self.ring)
        out = self.ring[slot, :len(idx)].numpy()
        _, y, s = self.dataset.batch_arrays(idx, out)
        return slot, len(idx), y, s


def already_collated(batch: Any) -> Any:
    return batch


class BatchLoader:
    """Iterates ``(images, targets)`` (``((images, scalars), targets)`` with scalar inputs) batch by batch."""

    def __init__(self, dataset: ImageDataset, sampler: Any, batch_size: int, workers: int = 0,
                 indices: np.ndarray | None = None, pin_memory: bool = False,
                 generator: torch.Generator | None = None, worker_init_fn: Callable[[int], None] | None = None):
        n = len(dataset) if indices is None else len(indices)
        if sampler is None:
            sampler = range(n)
        self.ring = None
        if workers:
            slots = PREFETCH * workers + HELD
            self.ring = torch.empty((slots, batch_size, *dataset.store.shape), dtype=torch.float32).share_memory_()
        self.pin = pin_memory and self.ring is not None
        self.loader = DataLoader(BatchFetch(dataset, indices, self.ring), batch_size=None,
                                 sampler=NumberedBatches(sampler, batch_size), num_workers=workers,
                                 collate_fn=already_collated, generator=generator,
                                 pin_memory=pin_memory and self.ring is None,
                                 prefetch_factor=PREFETCH if workers else None,
                                 worker_init_fn=worker_init_fn if workers else None, persistent_workers=False)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        if self.ring is None:
            yield from self.loader
            return
        for slot, n, y, s in self.loader:
            x = self.ring[slot, :n]
            if self.pin:
                x = x.pin_memory()
            yt = torch.from_numpy(y)
            yield (x, yt) if s is None else ((x, torch.from_numpy(s)), yt)
