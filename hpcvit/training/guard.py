"""Non-finite losses and weights: never trained on silently, never saved as a valid checkpoint.

``optim.nonfinite: stop`` (default) ends the task FAILED at the first check that sees a non-finite loss or
gradient norm, before the next checkpoint or evaluation, naming the steps; ``skip_batch`` drops the update
of a step whose loss or gradients are not finite (every rank agrees) and counts it. Checks cost no host
synchronisation on the CPU; on a GPU, ``stop`` looks every :data:`CHECK_EVERY_STEPS` steps and before each
save and evaluation, ``skip_batch`` at every step.
"""

from __future__ import annotations

import torch
from torch import nn

from hpcvit.training import distributed
from hpcvit.training.distributed import Dist

CHECK_EVERY_STEPS = 25


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss, gradient or weight."""


class NonFiniteGuard:
    def __init__(self, policy: str, d: Dist):
        self.policy, self.d = policy, d
        self.skipped = 0
        """Steps whose update ``skip_batch`` dropped, in all."""
        self._bad = torch.zeros((), dtype=torch.bool, device=d.device)
        self._since_step = 0

    def observe(self, value: torch.Tensor) -> None:
        """Note a loss or gradient norm of the current step (on the device, no synchronisation)."""
        self._bad |= ~torch.isfinite(value.detach()).all()

    def _agreed_bad(self) -> bool:
        return bool(distributed.all_reduce_max([int(self._bad.item())], self.d)[0])

    def step_ok(self) -> bool:
        """``skip_batch``: whether this step's update may be applied (all ranks agree); resets the note."""
        bad = self._agreed_bad()
        self._bad.zero_()
        if bad:
            self.skipped += 1
        return not bad

    def local_flag(self, global_step: int) -> int:
        """``stop``: this rank's flag for the per-step all-reduce: 1 if a non-finite value was noted (read only
        when a check is due, so that a GPU is not synchronised every step)."""
        if self.policy != "stop" or not (self.d.device.type == "cpu" or global_step % CHECK_EVERY_STEPS == 0):
            return 0
        if self._bad.item():
            return 1
        self._since_step = global_step
        return 0

    def fail(self, epoch: int, global_step: int) -> None:
        raise NonFiniteError(
            f"non-finite loss or gradient in epoch {epoch}, optimiser steps {self._since_step + 1}-{global_step} "
            "(optim.nonfinite: stop); no checkpoint was written after it: lower optim.lr, set optim.grad_clip, "
            "or set optim.nonfinite: skip_batch")

    def check(self, epoch: int, global_step: int) -> None:
        """``stop``: raise :class:`NonFiniteError` on every rank if any rank noted a non-finite value."""
        if self.policy == "stop" and self._agreed_bad():
            self.fail(epoch, global_step)

    def check_weights(self, model: nn.Module, epoch: int, global_step: int) -> None:
        """Raise on every rank when a weight or buffer is not finite (called before a checkpoint is written)."""
        tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
        finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all() if tensors else torch.tensor(True)
        if distributed.all_reduce_max([int(not bool(finite.item()))], self.d)[0]:
            raise NonFiniteError(f"non-finite weights after optimiser step {global_step} (epoch {epoch}); "
                                 "the checkpoint was not written")
