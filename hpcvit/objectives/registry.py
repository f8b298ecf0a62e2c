"""The registry of objectives and of their metrics: each metric once, with the direction that makes it better.

An objective is registered by name (``data.task`` in a spec) with :func:`register_objective`; the metrics it
reports are declared in it as :class:`Metric` s. Everything that ranks, picks a best epoch or validates a
metric name asks here (:func:`metric_mode`, :func:`is_better`, :func:`get_objective`) instead of testing a
task's name. Nothing here imports torch: validating a spec stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

Mode = Literal["max", "min"]
SPLIT_PREFIXES = ("val_raw_", "val_", "test_", "best_val_", "best_")
"""How a metric appears in MLflow and progress: ``val_<name>`` per epoch (``val_raw_<name>`` for the raw weights
beside an EMA), ``test_<name>`` at the end, ``best_val_<name>`` as the best so far."""


@dataclass(frozen=True)
class Metric:
    """One evaluation metric of an objective."""

    name: str
    """Name without split prefix (``roc_auc``); logged as ``val_roc_auc`` and ``test_roc_auc``."""
    mode: Mode
    """``max`` when a larger value is better, ``min`` when a smaller one is."""
    doc: str
    """What it measures, in one line (shown by ``hpcvit validate`` errors and the docs)."""


@dataclass(frozen=True)
class Column:
    """A column an objective adds to ``hpcvit compare``."""

    key: str
    """Key in the comparison's rows (and CSV/JSON records)."""
    header: str
    """Header in the terminal table."""
    metric: str
    """The metric shown, without split prefix (``rejection_at_eff_0.3``): of the test split when the sweep has
    one, else of validation at the best epoch."""
    digits: int = 3
    priority: int = 1
    """The highest is left out first on a narrow terminal."""
    bound: bool = False
    """Whether ``<metric>_is_bound`` marks a value that is only a lower bound (shown as ``>=``)."""


_METRICS: dict[str, Metric] = {}
_OBJECTIVES: dict[str, Any] = {}
"""Objective classes (:class:`hpcvit.objectives.base.Objective` subclasses) by name."""
T = TypeVar("T", bound=type)


def register_metric(metric: Metric) -> Metric:
    """Declare a metric; the same name twice must mean the same direction."""
    known = _METRICS.get(metric.name)
    if known is not None and known.mode != metric.mode:
        raise ValueError(f"metric {metric.name!r} registered as {known.mode} and as {metric.mode}")
    _METRICS.setdefault(metric.name, metric)
    return _METRICS[metric.name]


def register_objective(cls: T) -> T:
    """Class decorator: the objective ``cls.name`` (what ``data.task`` names), with its metrics."""
    if cls.name in _OBJECTIVES and _OBJECTIVES[cls.name] is not cls:
        raise ValueError(f"objective {cls.name!r} is registered twice")
    names = [m.name for m in cls.metrics]
    if len(set(names)) != len(names):
        raise ValueError(f"objective {cls.name!r} lists a metric twice: {names}")
    if cls.default_metric not in names:
        raise ValueError(f"objective {cls.name!r}: default metric {cls.default_metric!r} is not among {names}")
    for m in cls.metrics:
        register_metric(m)
    _OBJECTIVES[cls.name] = cls
    return cls


def objective_names() -> list[str]:
    return sorted(_OBJECTIVES)


def _choices(names: list[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def get_objective(name: str) -> Any:
    """The objective registered as ``name``; a one-line error naming the known ones otherwise."""
    try:
        return _OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}: Input should be {_choices(objective_names())}") from None


def base_name(metric: str) -> str:
    """``val_roc_auc`` -> ``roc_auc`` (any split prefix of :data:`SPLIT_PREFIXES` dropped)."""
    for prefix in SPLIT_PREFIXES:
        if metric.startswith(prefix) and metric[len(prefix):] in _METRICS:
            return metric[len(prefix):]
    return metric


def metric_mode(metric: str) -> Mode:
    """``max`` or ``min`` for a registered metric, with or without its split prefix."""
    try:
        return _METRICS[base_name(metric)].mode
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; registered: {', '.join(sorted(_METRICS))}") from None


def metrics() -> dict[str, Metric]:
    """Every registered metric by name."""
    return dict(_METRICS)


def is_better(value: float, best: float | None, mode: Mode) -> bool:
    """Whether ``value`` beats ``best`` (None or NaN: nothing yet); a NaN value never does."""
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


def check_metric(task: str, choice: str, field: str) -> str | None:
    """Why ``choice`` (``auto`` or ``val_<metric>``) cannot rank runs of ``task``; None when it can."""
    if choice == "auto":
        return None
    objective = get_objective(task)
    names = [f"val_{m.name}" for m in objective.metrics]
    if choice not in names:
        if base_name(choice) in _METRICS and choice.startswith("val_"):
            return f"{choice} does not apply to a {task} task (its metrics: {', '.join(names)})"
        return f"{field}: Input should be 'auto' or {_choices(names)}" if field else \
            f"unknown metric {choice!r} (a {task} task has {', '.join(names)})"
    return None
