"""An epoch's running training loss, samples and time on this rank, carried through checkpoints so that an
epoch interrupted by a requeue reports what the whole epoch did, as its uninterrupted twin does."""

from __future__ import annotations

import time
from typing import Any

import torch


class EpochMeter:
    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self, state: dict[str, Any] | None = None) -> None:
        """Start an epoch, or continue one from a checkpoint's ``state`` (this rank's :meth:`state_dict`)."""
        state = state or {}
        # Summed on the device (float64, as Python floats would be): no host synchronisation per step.
        self.loss_sum = torch.tensor(float(state.get("loss_sum", 0.0)), dtype=torch.float64, device=self.device)
        self.samples = int(state.get("samples", 0))
        self.seconds_before = float(state.get("seconds", 0.0))
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, n: int) -> None:
        self.loss_sum += loss.double() * n
        self.samples += n

    @property
    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": float(self.loss_sum.item()), "samples": self.samples, "seconds": self.seconds}
