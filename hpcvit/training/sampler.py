"""Which samples each rank trains on, batch by batch, resumable at any micro-batch."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler


class ShardSampler(Sampler[int]):
    """Each rank's share of a (seeded, per-epoch) permutation, resumable at any batch.

    Every rank gets the same number of batches (the permutation is cut to a multiple of the world size),
    so DDP ranks never wait on each other at the end of an epoch. ``arrange(indices, batch_size, seed)``, when
    given, reorders a rank's epoch (e.g. batches of events of similar length); it must return the same indices
    and depend on nothing but its arguments, so that a resumed epoch sees the same batches.
    """

    def __init__(self, n: int, rank: int, world: int, batch_size: int, seed: int, shuffle: bool = True,
                 max_batches: int | None = None,
                 arrange: Callable[[list[int], int, int], list[int]] | None = None):
        self.n, self.rank, self.world, self.batch_size = n, rank, world, batch_size
        self.seed, self.shuffle, self.arrange = seed, shuffle, arrange
        per_rank = n // world
        self.batches = math.ceil(per_rank / batch_size)
        if max_batches is not None:
            self.batches = min(self.batches, max_batches)
        self.per_rank = min(per_rank, self.batches * batch_size)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def indices(self) -> list[int]:
        """This rank's samples of the whole epoch, in training order."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        usable = (self.n // self.world) * self.world
        mine = order[:usable][self.rank::self.world][: self.per_rank]
        if self.arrange is not None:
            mine = self.arrange(mine, self.batch_size, (self.seed * 100_003 + self.epoch) * 1_009 + self.rank)
        return mine

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return max(self.per_rank - self.start_batch * self.batch_size, 0)


class StepPlan:
    """How an epoch's micro-batches group into optimiser steps of ``accum`` micro-batches."""

    def __init__(self, sampler: ShardSampler, accum: int):
        self.sampler, self.accum = sampler, accum

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.sampler.batches / self.accum)

    def first_batch(self, step: int) -> int:
        """The micro-batch a (resumed) epoch starts at when ``step`` steps of it are done."""
        return step * self.accum

    def size(self, step: int) -> tuple[int, int]:
        """(micro-batches, samples) of optimiser step ``step`` of the epoch on this rank; (0, 0) past its end."""
        bs, per_rank = self.sampler.batch_size, self.sampler.per_rank
        first = step * self.accum
        last = min(first + self.accum, self.sampler.batches)
        return max(last - first, 0), sum(min(bs, per_rank - j * bs) for j in range(first, last))
