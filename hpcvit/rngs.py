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
from collections.abc import Iterator

import numpy as np


@contextlib.contextmanager
def host_generators_kept() -> Iterator[None]:
    """Python's and numpy's global generator states restored on exit, whatever ran inside."""
    py, npy = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
