"""What a checkpoint holds: every component an exact resume needs, collected under one versioned format.

In the way torchtitan's checkpointer collects *Stateful* components, :class:`TrainState` asks each part of
training (model, optimiser, schedule, grad scaler, EMA, progress counters) for its ``state_dict`` and gives it
back on load. Every value is a tensor or a plain number, string, list or dict, so checkpoints load with
``torch.load(weights_only=True)``: a checkpoint file can carry no code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

CHECKPOINT_VERSION = 2
"""Format of the checkpoint dict; a checkpoint of another version is refused with a message, never misread."""


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class CheckpointFormatError(ValueError):
    """A checkpoint that is not of :data:`CHECKPOINT_VERSION` or lacks a component."""


@dataclass
class TrainProgress:
    """Where training is: the counters a resumed task continues from."""

    epoch: int = 0
    """Epochs completed (the epoch being trained)."""
    step_in_epoch: int = 0
    """Optimiser steps done in the current epoch."""
    global_step: int = 0
    """Optimiser steps done in all."""
    best_metric: float | None = None
    """Best validation value of the primary metric so far."""
    best_epoch: int = -1
    """The epoch that reached it."""

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in fields(self):
            setattr(self, f.name, state[f.name])


class TrainState:
    """The checkpointed components of one task's training.

    ``components`` maps a name to a :class:`Stateful` (None for a part switched off, e.g. no EMA). ``optional``
    names the components a checkpoint may lack (one written before the part was switched on), each with the
    saved component to start it from, or None to keep it as it is (an EMA switched on later starts at the
    saved weights; a grad scaler starts fresh).
    """

    def __init__(self, progress: TrainProgress, components: dict[str, Stateful | None],
                 optional: dict[str, str | None] | None = None):
        self.progress = progress
        self.components = components
        self.optional = optional or {}

    def state_dict(self, *, rng: list[dict[str, Any]], world_size: int,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint: components, progress counters (top level), every rank's RNG state and ``extra``."""
        return {
            "version": CHECKPOINT_VERSION,
            **{name: c.state_dict() if c is not None else None for name, c in self.components.items()},
            **self.progress.state_dict(), "rng": rng, "world_size": world_size, **(extra or {}),
        }

    @staticmethod
    def check(state: dict[str, Any]) -> None:
        version = state.get("version") if isinstance(state, dict) else None
        if version != CHECKPOINT_VERSION:
            raise CheckpointFormatError(f"checkpoint format version {version!r}, this hpcvit reads version "
                                        f"{CHECKPOINT_VERSION}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check(state)
        for name, component in self.components.items():
            if component is None:
                continue
            saved = state.get(name)
            if saved is None and self.optional.get(name):
                saved = state.get(self.optional[name])
            if saved is None:
                if name in self.optional:
                    continue
                raise CheckpointFormatError(f"checkpoint has no {name!r} state")
            component.load_state_dict(saved)
        self.progress.load_state_dict(state)
