"""The training loader: whole batches of an :class:`ImageDataset`, each read by one indexing operation.

The batches are those of ``BatchSampler(sampler, batch_size, drop_last=False)``, the same (rows, order, last
partial batch) as a ``DataLoader(dataset, batch_size, sampler=sampler)``; the DataLoader runs with
``batch_size=None`` over them, so a fetch is a whole batch and nothing is collated.

The images land in a *ring*: slots allocated once per loader (in shared memory with worker processes), into
which batch ``b`` is gathered straight from the memory-mapped cache (slot ``b % slots``); a worker returns only
``b`` and the (small) targets. That saves a new array per batch (pages to fault in) and, with
workers, the copy into a new shared-memory block and its file-descriptor hand-over that a tensor returned by a
worker costs. The ring holds every batch the DataLoader can have in flight (``prefetch_factor`` per worker)
plus :data:`HELD` taken by the consumer, so a batch's images stay valid until ``HELD - 1`` further batches
have been taken; with ``pin_memory`` they are copied into pinned memory as they are taken (what the
DataLoader's pinning would do).
"""

from __future__ import annotations

import atexit
import functools
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from hpcvit.data.dataset import ImageDataset

HELD = 2
"""Batches a consumer may hold at once (the one in use and the one before it, as a ``for`` loop does)."""

PREFETCH = 4
"""Batches in flight per worker (``prefetch_factor``): with the DataLoader's default of 2, workers on a busy
machine sat idle waiting for the main process to hand out the next batch."""


class NumberedBatches(Sampler[tuple[int, list[int]]]):
    """``(number, indices)`` of each batch of ``BatchSampler(sampler, batch_size, drop_last=False)``, numbered
    from ``start``."""

    def __init__(self, sampler: Any, batch_size: int):
        self.batches = BatchSampler(sampler, batch_size, drop_last=False)
        self.start = 0

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        return enumerate(self.batches, self.start)

    def __len__(self) -> int:
        return len(self.batches)


class BatchFetch:
    """What the DataLoader indexes with ``(number, indices)``: the batch gathered into its slot of ``ring``."""

    def __init__(self, dataset: ImageDataset, ring: torch.Tensor, indices: np.ndarray | None = None):
        self.dataset, self.ring = dataset, ring
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        """Positions in ``dataset`` of this loader's samples (a subset); None for all of them."""

    def __len__(self) -> int:
        return len(self.dataset) if self.indices is None else len(self.indices)

    def __getitem__(self, item: tuple[int, list[int]]) -> tuple[int, int, np.ndarray, np.ndarray | None]:
        number, idx = item
        if self.indices is not None:
            idx = self.indices[np.asarray(idx, dtype=np.int64)]
        _, y, s = self.dataset.batch_arrays(idx, self.ring[number % len(self.ring), :len(idx)].numpy())
        return number, len(idx), y, s


def already_collated(batch: Any) -> Any:
    return batch


class BatchLoader:
    """Iterates ``(images, targets)`` (``((images, scalars), targets)`` with scalar inputs) batch by batch.

    Iterate it again for the next epoch (after the sampler's ``set_epoch``), one iteration at a time: with
    ``persistent`` the workers and the ring stay (no new processes, nor pages for them to fault in, per
    epoch). Batch numbers go on from the last batch taken, so the first batches of an iteration never land in
    the slots of the last ones taken before, which the consumer may still hold.
    """

    def __init__(self, dataset: ImageDataset, sampler: Any, batch_size: int, workers: int = 0,
                 indices: np.ndarray | None = None, pin_memory: bool = False, persistent: bool = False,
                 generator: torch.Generator | None = None, worker_init_fn: Callable[[int], None] | None = None,
                 context: Any = None):
        n = len(dataset) if indices is None else len(indices)
        self.ring = torch.empty((PREFETCH * workers + HELD, batch_size, *dataset.store.shape), dtype=torch.float32)
        if workers:
            self.ring.share_memory_()
        self.pin = pin_memory
        self.numbered = NumberedBatches(range(n) if sampler is None else sampler, batch_size)
        self.received = -1
        """The number of the last batch handed to the consumer."""
        self.loader = DataLoader(BatchFetch(dataset, self.ring, indices), batch_size=None, sampler=self.numbered,
                                 num_workers=workers, collate_fn=already_collated, generator=generator,
                                 prefetch_factor=PREFETCH if workers else None,
                                 worker_init_fn=worker_init_fn if workers else None,
                                 multiprocessing_context=context if workers else None,
                                 persistent_workers=persistent and workers > 0)
        # Persistent workers ignore the stop signals, so multiprocessing's exit handler (terminate, then join)
        # would wait for them for ever: stop them first (atexit runs the handlers registered last first).
        self._at_exit = functools.partial(_close, weakref.ref(self)) if persistent and workers else None
        if self._at_exit is not None:
            atexit.register(self._at_exit)

    def close(self) -> None:
        """Stop the workers now (a persistent loader keeps them between iterations until then)."""
        if self._at_exit is not None:
            atexit.unregister(self._at_exit)
        it = self.loader._iterator  # where torch keeps a persistent loader's iterator, and so its workers
        self.loader._iterator = None
        if it is not None:
            it._shutdown_workers()

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        # an iteration left early may have had batches in flight past the last one taken: torch finishes (and
        # drops) them before the next iteration's first fetch, into slots the consumer does not hold
        self.numbered.start = self.received + 1
        for number, n, y, s in self.loader:
            self.received = number
            x = self.ring[number % len(self.ring), :n]
            if self.pin:
                x = x.pin_memory()
            yt = torch.from_numpy(y)
            yield (x, yt) if s is None else ((x, torch.from_numpy(s)), yt)


def _close(ref: weakref.ref) -> None:
    loader = ref()
    if loader is not None:
        loader.close()
