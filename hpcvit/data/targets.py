"""How a target column becomes training targets: the part of the data an objective decides.

:func:`hpcvit.data.build.build_datasets` takes a :class:`TargetRule` from the objective that trains on the data
(class labels for a classifier, values for a regression); :class:`Values` is the rule of plain finite values,
used where no objective asks (``hpcvit data convert``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hpcvit.data.store import DataError
from hpcvit.config import DataSpec

Where = Callable[[int], str]
"""The file and row of the i-th selected sample, for messages."""


class TargetRule(Protocol):
    """What an objective says about its targets."""

    info_key: str
    """Key of :meth:`describe`'s summary in the data bundle's ``info`` (and in MLflow's data facts)."""

    def make(self, raw: np.ndarray, spec: DataSpec, where: Where | None = None) -> np.ndarray:
        """float32 targets from the raw column of the selected samples; a :class:`DataError` for bad values."""
        ...

    def describe(self, targets: np.ndarray, parts: dict[str, np.ndarray]) -> dict[str, Any]:
        """A summary of each split (``parts``: split name -> positions in ``targets``)."""
        ...

    def check(self, summary: dict[str, Any], spec: DataSpec, where: Path) -> None:
        """Refuse splits the objective cannot train on (a :class:`DataError` naming the spec field)."""
        ...


def nonfinite_error(raw: np.ndarray, spec: DataSpec, where: Where | None) -> DataError | None:
    """An error naming the first non-finite target, or None."""
    bad = np.flatnonzero(~np.isfinite(raw))
    if not len(bad):
        return None
    at = where(int(bad[0])) if where else f"row {int(bad[0])}"
    return DataError(f"{at}: target {spec.target_key!r} is {raw[bad[0]]} ({len(bad)} non-finite targets)",
                     field="data.target_key")


class Values:
    """Values taken as they are, summarised by their mean, spread and range; non-finite ones are refused
    unless ``require_finite`` is false (then they are counted)."""

    info_key = "target_stats"

    def __init__(self, require_finite: bool = True):
        self.require_finite = require_finite

    def make(self, raw: np.ndarray, spec: DataSpec, where: Where | None = None) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        problem = nonfinite_error(raw, spec, where) if self.require_finite else None
        if problem is not None:
            raise problem
        return raw.astype(np.float32)

    def describe(self, targets: np.ndarray, parts: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, pos in parts.items():
            t = targets[pos]
            finite = t[np.isfinite(t)]
            out[name] = ({"n": int(len(t)), "mean": float(finite.mean()), "std": float(finite.std()),
                          "min": float(finite.min()), "max": float(finite.max())} if len(finite) else {"n": int(len(t))})
            if len(finite) < len(t):
                out[name]["non_finite"] = int(len(t) - len(finite))
        return out

    def check(self, summary: dict[str, Any], spec: DataSpec, where: Path) -> None:
        return None
