"""Objectives: what kind of training a task is (``data.task``), as plug-ins of one training loop.

:mod:`.registry` holds every objective and every metric with its direction; :mod:`.base` says what an objective
owns; :mod:`.image` is what the image objectives share; :mod:`.binary` and :mod:`.regression` are the two built
in. Importing this package registers them.
"""

from hpcvit.objectives import binary, hits, regression  # noqa: F401 - registers the built-in objectives
from hpcvit.objectives.base import Evaluator, Objective
from hpcvit.objectives.registry import (
    Metric,
    check_metric,
    get_objective,
    is_better,
    metric_mode,
    metrics,
    objective_names,
    register_metric,
    register_objective,
)

__all__ = ["Evaluator", "Metric", "Objective", "check_metric", "get_objective", "is_better", "metric_mode",
           "metrics", "objective_names", "register_metric", "register_objective"]
