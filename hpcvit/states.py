"""The states a task can be in, and which of them are final, resumable or alive.

The launcher records a state in the task's ``state.json``; :mod:`hpcvit.scheduler.status` checks it against what is
alive (the Slurm queue, local processes) to give the task's true state, which ``status``, ``resume``,
``cancel`` and the MLflow ``hpcvit.state`` tag all use.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

Executor = Literal["local", "slurm"]
"""Where a sweep's tasks run: this machine (submitit's local executor) or a Slurm cluster."""
EXECUTORS: tuple[Executor, ...] = ("local", "slurm")


class TaskState(str, Enum):
    """A task's state; the value is what ``state.json``, ``status --format json`` and MLflow tags hold."""

    NEW = "NEW"
    """In the ledger, never submitted."""
    SUBMITTED = "SUBMITTED"
    """Handed to the scheduler; its launcher has not started yet."""
    QUEUED = "QUEUED"
    """Local executor: the launcher runs and waits for one of ``array_parallelism`` slots."""
    PENDING = "PENDING"
    """In the Slurm queue, waiting for resources."""
    RUNNING = "RUNNING"
    """The launcher runs torchrun."""
    SUSPENDED = "SUSPENDED"
    """Slurm suspended the job (gang scheduling); it continues where it was."""
    HELD = "HELD"
    """Slurm holds the job (e.g. ``launch failed requeued held``); it will not start until released."""
    REQUEUED = "REQUEUED"
    """Stopped for requeue (preemption, time limit) and back in the queue; it continues from its checkpoint."""
    PREEMPTED = "PREEMPTED"
    """Stopped at a checkpoint by a signal and not queued again (``resume`` continues it)."""
    COMPLETED = "COMPLETED"
    """Trained all epochs; ``result.json`` written."""
    FAILED = "FAILED"
    """The trainer raised, or torchrun exited with an error; the message says why."""
    CANCELLED = "CANCELLED"
    """Stopped by ``hpcvit cancel`` or ``scancel``; ``resume`` continues it."""
    LOST = "LOST"
    """Recorded as running, but its process or job vanished without a word (SIGKILL, node loss)."""
    TIMEOUT = "TIMEOUT"
    """Hit its time limit more often than ``resources.max_requeues`` allows."""
    RUNG_DONE = "RUNG_DONE"
    """Trained its rung's epochs in an adaptive search (checkpointed); waits for the rung's decision: promoted
    (it continues from its checkpoint) or STOPPED_EARLY."""
    STOPPED_EARLY = "STOPPED_EARLY"
    """Not promoted by an adaptive search: final, by design."""

    def __str__(self) -> str:
        return self.value


FINAL = frozenset({TaskState.COMPLETED, TaskState.STOPPED_EARLY})
"""Done for good: never resubmitted."""
RESUMABLE = frozenset({TaskState.NEW, TaskState.FAILED, TaskState.CANCELLED, TaskState.PREEMPTED, TaskState.LOST,
                       TaskState.TIMEOUT})
"""Not finished and not queued or running: ``resume`` resubmits these."""
TERMINAL = FINAL | (RESUMABLE - {TaskState.NEW}) | {TaskState.RUNG_DONE}
"""Nothing runs or waits in the queue for this task: a sweep whose tasks are all terminal is over (for now; a
search's next rung is decided then)."""
ACTIVE = frozenset(TaskState) - TERMINAL - {TaskState.NEW}
"""Queued, waiting or running: ``cancel`` stops these."""
