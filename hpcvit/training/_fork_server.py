"""Imported only by the fork server that loader workers come from (see :mod:`.workers`), before its forks.

The server starts with the trainer's stop signals blocked (:func:`.workers.context`). Here it ignores them
too, and leaves them blocked: a preemption signals every process of the job, and the server must outlive it,
since the trainer may still take batches on the way to its checkpoint. Its workers inherit the mask, which
holds the signals back while a worker starts: torch installs a SIGTERM handler there that ends the worker,
and only the ``worker_init_fn`` after it ignores the signals (:func:`.stop.ignore_in_worker`).

The server dies with the trainer, however the trainer ends: its workers hold the server open and watch it,
not the trainer, so a server left running would keep a killed trainer's workers alive for ever. Then it
imports what a worker runs, so each fork starts with it loaded.
"""

import signal

from hpcvit.scheduler.procs import die_with_parent
from hpcvit.training.stop import STOP_SIGNALS

for _sig in STOP_SIGNALS:
    signal.signal(_sig, signal.SIG_IGN)
die_with_parent(signal.SIGKILL)  # the server is started by the trainer's main thread, which lives as long as it

import numpy  # noqa: E402,F401
import torch  # noqa: E402,F401
import torch.utils.data  # noqa: E402,F401

import hpcvit.data.batches  # noqa: E402,F401
import hpcvit.data.dataset  # noqa: E402,F401
import hpcvit.hits.data  # noqa: E402,F401
import hpcvit.train  # noqa: E402,F401  (each worker runs the trainer's main module as __mp_main__)
