"""Keeping Python's and numpy's global generators out of reach of code that is not training.

Libraries draw from them as a side effect: MLflow for the jitter of its retries, and modules at their first
import (rich draws a number when it is imported, pulled in lazily by scikit-learn's metrics). Whether such a
draw happens during training differs between a task that ran straight through and one that restarted (the
restarted process imports lazily at another moment, retries when another moment contends), so a resumed
task's generators would drift a draw away from its uninterrupted twin's. Evaluation, tracking and the run's
facts run inside :func:`host_generators_kept`.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

_lock = threading.Lock()
_sets = 0
"""How many times the generators were set on purpose (:func:`restore`: a checkpoint's states)."""
_last: tuple[Any, Any] | None = None


def restore(python_state: Any, numpy_state: Any) -> None:
    """Set Python's and numpy's generators on purpose (a resumed checkpoint's states). A
    :func:`host_generators_kept` block running meanwhile in another thread (opening the MLflow run) ends on
    these states, not on the ones it saw at its start."""
    global _sets, _last
    with _lock:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        _sets += 1
        _last = (python_state, numpy_state)


@contextlib.contextmanager
def host_generators_kept() -> Iterator[None]:
    """Python's and numpy's global generator states restored on exit, whatever ran inside (in this thread or,
    meanwhile, in another: training itself draws from neither)."""
    with _lock:
        py, npy, seen = random.getstate(), np.random.get_state(), _sets
    try:
        yield
    finally:
        with _lock:
            if _sets != seen and _last is not None:
                py, npy = _last
            random.setstate(py)
            np.random.set_state(npy)
