"""Where DataLoader worker processes come from: a fork server, never the trainer itself.

The trainer has threads (tracking, checkpoint writes, the parent watch, the queue feeders of earlier
loaders). A fork taken while one of them starts or ends can leave the child stuck for ever in CPython's
after-fork clean-up, and the task with it. Workers are forked instead from a server process that
multiprocessing starts once per trainer (a fresh, single-threaded interpreter); it imports what workers
need first (:mod:`._fork_server`), so each worker starts in milliseconds, and it lives as long as the trainer.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import forkserver
from typing import Any

from hpcvit.scheduler.procs import held_signals

PRELOAD = ["hpcvit.training._fork_server"]


def context(workers: int) -> Any:
    """The multiprocessing context for a loader with ``workers`` processes (None without workers); its server
    is started now, if it is not running.

    Its workers start with the stop signals blocked, so that none reaches a worker while torch's own handler
    is installed: the loader's ``worker_init_fn`` must be :func:`.stop.ignore_in_worker`, which ignores and
    unblocks them (without it, nothing could stop the workers but a kill).
    """
    if not workers:
        return None
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    # The server (and the resource tracker, if not running yet) start with them blocked: one arriving in their
    # start-up (seconds: the server imports torch) stays pending instead of killing them; they stay blocked.
    with held_signals():
        forkserver.ensure_running()
    return ctx
