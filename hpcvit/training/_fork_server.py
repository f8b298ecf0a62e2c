"""Imported only by the fork server that loader workers come from (see :mod:`.workers`), before its forks.

It imports what a worker runs, so each fork starts with it loaded, and makes the server ignore the trainer's
stop signals: a preemption signals every process of the job, and the server must outlive it, since the
trainer may still take batches on the way to its checkpoint. The server dies with the trainer, however the
trainer ends: its workers hold the server open and watch it, not the trainer, so a server left running would
keep a killed trainer's workers alive for ever.
"""

import signal

import numpy  # noqa: F401
import torch  # noqa: F401
import torch.utils.data  # noqa: F401

import hpcvit.data.batches  # noqa: F401
import hpcvit.data.dataset  # noqa: F401
import hpcvit.hits.data  # noqa: F401
import hpcvit.train  # noqa: F401  (each worker runs the trainer's main module as __mp_main__)
from hpcvit.scheduler.procs import die_with_parent
from hpcvit.training.stop import STOP_SIGNALS

for _sig in STOP_SIGNALS:
    signal.signal(_sig, signal.SIG_IGN)
die_with_parent(signal.SIGKILL)  # the server is started by the trainer's main thread, which lives as long as it
