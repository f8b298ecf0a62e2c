"""Where DataLoader worker processes come from: a fork server, never the trainer itself.

The trainer has threads (tracking, checkpoint writes, the parent watch, the queue feeders of earlier
loaders). A fork taken while one of them starts or ends can leave the child stuck for ever in CPython's
after-fork clean-up, and the task with it. Workers are forked instead from a server process that
multiprocessing starts once per trainer (a fresh, single-threaded interpreter); it imports what workers
need first (:mod:`._fork_server`), so each worker starts in milliseconds, and it lives as long as the trainer.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

PRELOAD = ["hpcvit.training._fork_server"]


def context(workers: int) -> Any:
    """The multiprocessing context for a loader with ``workers`` processes (None without workers)."""
    if not workers:
        return None
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # read when the server starts, on the first loader's first iteration
    return ctx
