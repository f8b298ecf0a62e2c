"""The ``sweep:`` block: the grid and zip a spec expands into runs, and the adaptive search over them."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from hpcvit.config.base import SEED_LIMIT, Section, finite

MAX_RUNS = 20_000
"""Default cap on the runs one spec may expand to (``sweep.max_runs`` raises it)."""


Distribution = Literal["loguniform", "uniform", "int", "choice"]


class SearchSpec(Section):
    """Adaptive search over the sweep's configurations: successive halving in rungs, or random sampling."""

    method: Literal["halving", "random"] = "halving"
    """``halving``: every configuration trains ``min_epochs``, the best 1/``eta`` continue (from their own
    checkpoints) to ``eta`` times as many epochs, and so on up to ``max_epochs``; the others end STOPPED_EARLY.
    ``random``: ``n_trials`` draws from ``space``, each trained to ``max_epochs``."""
    metric: str = "val_roc_auc"
    """The validation metric that ranks configurations at the end of a rung (its value at the rung's last epoch):
    ``val_<metric>`` of one of the task's metrics (checked when the sweep is expanded)."""
    mode: Literal["max", "min"] | None = None
    """Whether larger or smaller ``metric`` is better; null: the metric's own direction (``max`` for ROC-AUC)."""
    min_epochs: int = Field(1, ge=1)
    """Epochs of the first rung."""
    max_epochs: int | None = Field(None, ge=1)
    """Epochs of the last rung; it sets ``optim.epochs`` of every configuration, so that the learning-rate
    schedule is defined over it and a promotion is an exact resume. Null: ``optim.epochs``."""
    eta: int = Field(3, ge=2)
    """Each rung keeps the best 1/eta of the configurations and trains them eta times as many epochs."""
    n_trials: int | None = Field(None, ge=1)
    """Draws from ``space`` (each crossed with the grid/zip); needs ``space``."""
    space: dict[str, dict[Distribution, list[Any]]] = {}
    """Dotted field -> one distribution: ``{loguniform: [low, high]}``, ``{uniform: [low, high]}``,
    ``{int: [low, high]}`` (both ends included) or ``{choice: [a, b, ...]}``."""
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    """Seed of the draws from ``space``: the same seed draws the same configurations."""

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpec:
        if self.max_epochs is not None and self.min_epochs > self.max_epochs:
            raise ValueError(f"min_epochs {self.min_epochs} must not exceed max_epochs {self.max_epochs}")
        if bool(self.space) != (self.n_trials is not None):
            raise ValueError("space and n_trials go together: n_trials draws from space")
        if self.method == "random" and not self.space:
            raise ValueError("method random needs space and n_trials")
        for key, dist in self.space.items():
            if len(dist) != 1:
                raise ValueError(f"space.{key}: give exactly one of loguniform, uniform, int, choice")
            (kind, args), = dist.items()
            finite(args, f"space.{key}")
            if kind == "choice":
                if not args:
                    raise ValueError(f"space.{key}: choice needs at least one value")
                continue
            if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
                raise ValueError(f"space.{key}: {kind} needs [low, high] numbers")
            low, high = args
            if kind == "int" and not all(isinstance(a, int) for a in args):
                raise ValueError(f"space.{key}: int needs integer bounds")
            if low > high or (kind != "int" and low == high):
                raise ValueError(f"space.{key}: low {low} must be below high {high}")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"space.{key}: loguniform needs low > 0")
        return self


class SweepSpec(Section):
    """Expansion of one spec into runs: the cartesian product of ``grid`` times the paired lists of ``zip``."""

    grid: dict[str, list[Any]] = {}
    """Dotted field -> values; every combination becomes a run (``optim.lr: [1e-3, 3e-4]``)."""
    zip: dict[str, list[Any]] = {}
    """Dotted field -> values; lists of equal length, the i-th values go together."""
    max_runs: int = Field(MAX_RUNS, ge=1)
    """Most runs the spec may expand to; a larger grid is refused before it is expanded (raise this when you
    mean it: each run costs memory and time at validation and a task in the ledger)."""
    search: SearchSpec | None = None
    """Adaptive search over the configurations (rungs of successive halving, or random draws); null: every
    configuration trains all its epochs."""

    @property
    def n_runs(self) -> int:
        """How many runs the grid and zip expand to."""
        trials = self.search.n_trials if self.search is not None and self.search.n_trials else 1
        return (math.prod(len(v) for v in self.grid.values()) * (len(next(iter(self.zip.values()))) if self.zip else 1)
                * trials)

    @model_validator(mode="after")
    def _non_empty(self) -> SweepSpec:
        for block in ("grid", "zip"):
            for key, values in getattr(self, block).items():
                if not values:
                    raise ValueError(f"{block}.{key}: needs at least one value")
        lengths = {len(v) for v in self.zip.values()}
        if len(lengths) > 1:
            raise ValueError(f"zip lists must have equal lengths, got {sorted(lengths)}")
        both = set(self.grid) & set(self.zip)
        if both:
            raise ValueError(f"field(s) {sorted(both)} appear in both grid and zip")

        for block in ("grid", "zip"):
            finite(getattr(self, block), block)
        if self.n_runs > self.max_runs:
            raise ValueError(f"expands to {self.n_runs:,} runs, more than sweep.max_runs = {self.max_runs:,} "
                             "(raise sweep.max_runs if you mean it)")
        return self
