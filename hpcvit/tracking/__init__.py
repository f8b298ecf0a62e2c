"""MLflow tracking: one parent run per sweep, one child run per task that every requeue continues.

``names`` (tags, parameter names, the default store) imports no MLflow; the modules that talk to MLflow
(``task_run``, ``sweep_run``, ``outage``) are imported on first use of their names from this package.
"""

from __future__ import annotations

import importlib
from typing import Any

from hpcvit.tracking.names import PARENT_TAG, TASK_KEY_TAG, flatten, resolve_uri

_LAZY = {
    "TaskTracker": "task_run", "sync_task": "task_run",
    "setup_sweep": "sweep_run", "terminate_run": "sweep_run", "child_runs": "sweep_run",
    "is_transient": "outage", "mlflow_client": "client",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"hpcvit.tracking.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'hpcvit.tracking' has no attribute {name!r}")


__all__ = ["PARENT_TAG", "TASK_KEY_TAG", "flatten", "resolve_uri", *_LAZY]
