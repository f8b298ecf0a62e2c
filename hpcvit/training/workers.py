"""Where DataLoader worker processes come from: a fork server, never the trainer itself.

The trainer has threads (tracking, checkpoint writes, the parent watch, the queue feeders of earlier
loaders). A fork taken while one of them starts or ends can leave the child stuck for ever in CPython's
after-fork clean-up, and the task with it. Workers are forked instead from a server process that
multiprocessing starts once per trainer (a fresh, single-threaded interpreter); it imports what workers
need first (:mod:`._fork_server`), so each worker starts in milliseconds, and it lives as long as the trainer.
"""

from __future__ import annotations

import multiprocessing
import signal
from multiprocessing import forkserver, resource_tracker
from typing import Any

from hpcvit.training.stop import STOP_SIGNALS

PRELOAD = ["hpcvit.training._fork_server"]


def context(workers: int) -> Any:
    """The multiprocessing context for a loader with ``workers`` processes (None without workers); its server
    is started now, if it is not running."""
    if not workers:
        return None
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    # The server and the resource tracker it starts inherit the blocked stop signals: one arriving in their
    # start-up (seconds: the server imports torch) stays pending instead of killing them. They stay blocked
    # in both, and in each worker until its worker_init_fn ignores them. Starting the tracker unblocks SIGINT
    # and SIGTERM again (multiprocessing's own guard for it), so they are blocked anew for the server.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return ctx
