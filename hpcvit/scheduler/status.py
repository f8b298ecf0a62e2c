"""A sweep's tasks as they really are: the ledger's records checked against what is alive.

The launcher records each task's state in its ``state.json``; a record can be stale (a SIGKILL or a lost node
gives the launcher no chance to write). :func:`task_statuses` checks every record against ONE ``squeue`` call
for all Slurm jobs of the sweep, and ``/proc`` for local ones: a task recorded as running whose process or job
is gone is LOST.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass

from hpcvit import fsio
from hpcvit.fsio import DamagedFileError
from hpcvit.ledger import SweepDir, TaskDir
from hpcvit.scheduler.adapter import SCHEDULERS
from hpcvit.scheduler.procs import pid_alive, process_alive
from hpcvit.states import TaskState


@dataclass
class TaskStatus:
    index: int
    label: str
    state: TaskState
    """The true state."""
    recorded: str
    """What state.json says (the launcher's last record)."""
    job_id: str
    executor: str
    restarts: int
    epoch: int | None
    epochs: int | None
    metric: str | None
    best_metric: float | None
    message: str
    log: str
    """Path of the task's training log."""
    eta_s: float | None = None
    """Seconds until a running task's last epoch ends, from its wall time per epoch (None when unknown)."""


def effective_state(recorded: TaskState, executor: str, *, completed: bool, queue_state: str | None = None,
                    queue_reason: str = "", launcher_alive: bool | Callable[[], bool] = False,
                    job_alive: bool | Callable[[], bool] = False, trainer_alive: Callable[[], bool] = lambda: False,
                    stop_cause: str | None = None) -> TaskState:
    """The true state of a task from its record and what is alive (the rule is its executor's
    :meth:`~hpcvit.scheduler.adapter.Scheduler.true_state`).

    ``queue_state``/``queue_reason``: the scheduler's state of its job and why (None: not in the queue);
    ``launcher_alive``: the local launcher recorded in state.json still runs; ``job_alive``: the local job's
    process still runs (both may be callables, asked only by an executor whose tasks run here);
    ``trainer_alive``: asked only for a task whose launcher or job is gone, whether its
    trainer still holds the task's lock (its ranks still saving): then it is RUNNING, not LOST, and ``resume``
    leaves it alone; ``stop_cause``: why the trainer last stopped at a checkpoint (``time_limit`` when the
    launcher saw the time-limit warning).
    """
    if completed:
        return TaskState.COMPLETED
    if executor not in SCHEDULERS:  # never submitted
        return recorded
    return SCHEDULERS[executor].true_state(
        recorded, queue_entry=None if queue_state is None else (queue_state, queue_reason),
        launcher_alive=_asked(launcher_alive), job_alive=_asked(job_alive), trainer_alive=trainer_alive,
        stop_cause=stop_cause)


def _asked(value: bool | Callable[[], bool]) -> Callable[[], bool]:
    return value if callable(value) else (lambda: value)


def _recorded(state: dict, job_id: str, task: TaskDir) -> TaskState:
    value = state.get("state", TaskState.SUBMITTED if job_id else TaskState.NEW)
    try:
        return TaskState(value)
    except ValueError:
        raise DamagedFileError(task.file(TaskDir.STATE), f"unknown state {value!r}") from None


def task_statuses(sweep: SweepDir, queue: dict[str, tuple[str, str]] | None = None) -> list[TaskStatus]:
    """Every task's true state; ``queue`` (job id -> (Slurm state, reason)) replaces the squeue call when given.

    A task whose ledger files cannot be read is shown LOST with a message naming the damaged file (``resume``
    then starts it again and its launcher writes a new record), so one damaged file never hides the others.
    """
    labels = sweep.labels
    latest = sweep.latest_jobs()
    if queue is None:  # one call per executor in use (one squeue for every Slurm job of the sweep)
        queue = {}
        for kind, scheduler in SCHEDULERS.items():
            queue.update(scheduler.queue([j for j, ex in latest.values() if ex == kind]))
    out = []
    tasks_dir = os.path.join(str(sweep.root), "tasks")
    for index in range(sweep.n_tasks):  # plain string paths: a 5,000-task sweep is 10,000+ file reads
        task = sweep.task(index)
        folder = os.path.join(tasks_dir, f"{index:05d}")
        job_id, executor = latest.get(index, ("", ""))
        try:
            state = fsio.read_object(os.path.join(folder, TaskDir.STATE), {})
            try:  # the trainer's report only informs; damaged, it must not change what the task's state is
                progress, progress_problem = fsio.read_object(os.path.join(folder, TaskDir.PROGRESS), {}), ""
            except DamagedFileError as exc:
                progress, progress_problem = {}, f"damaged ledger file {exc}"
            recorded = _recorded(state, job_id, task)
            queued, reason = queue.get(job_id, (None, ""))
            effective = effective_state(
                recorded, executor, completed=_has_result(os.path.join(folder, TaskDir.RESULT)),
                queue_state=queued, queue_reason=reason,
                launcher_alive=lambda s=state: process_alive(s.get("pid"), s.get("pid_start")),
                job_alive=lambda j=job_id: pid_alive(j), trainer_alive=task.trainer_running,
                stop_cause=state.get("stop_cause"))
            message = "; ".join(m for m in (state.get("message", ""), progress_problem) if m)
            if effective == TaskState.LOST and os.path.exists(os.path.join(folder, TaskDir.CANCEL)):
                # `hpcvit cancel` took it out before its trainer could record anything (pending, starting)
                effective, message = TaskState.CANCELLED, "cancelled (hpcvit cancel) before its training started"
            elif effective != recorded and effective in (TaskState.CANCELLED, TaskState.TIMEOUT):
                message = f"{message}; its job ended without being requeued".lstrip("; ")
            elif effective in (TaskState.HELD, TaskState.PENDING) and reason and reason != "None":
                message = f"{SCHEDULERS[executor].title}: {reason}" + (
                    "; `hpcvit resume` releases it" if effective == TaskState.HELD else "")
        except DamagedFileError as exc:
            state, progress, effective, message = {}, {}, TaskState.LOST, f"damaged ledger file {exc}"
            recorded = TaskState.LOST
        out.append(TaskStatus(
            index=task.index, label=labels[task.index] if task.index < len(labels) else "", state=effective,
            recorded=str(recorded),
            job_id=job_id, executor=executor, restarts=int(state.get("restarts", 0)),
            epoch=progress.get("epoch"), epochs=progress.get("epochs"), metric=progress.get("metric"),
            best_metric=progress.get("best_metric"), message=message, log=os.path.join(folder, TaskDir.LOG),
            eta_s=eta_seconds(progress) if effective == TaskState.RUNNING else None))
    return out


def eta_seconds(progress: dict, now: dt.datetime | None = None) -> float | None:
    """Seconds left of a running task: its epochs to go times its wall time per epoch (training and evaluation,
    else the training time of the last epoch), less the time since that epoch ended."""
    epoch, epochs = progress.get("epoch"), progress.get("epochs")
    per_epoch = progress.get("epoch_wall_s") or (progress.get("last") or {}).get("epoch_time_s")
    if not isinstance(epoch, int) or not isinstance(epochs, int) or not per_epoch or per_epoch <= 0:
        return None
    try:
        since = ((now or dt.datetime.now(dt.timezone.utc)) - dt.datetime.fromisoformat(progress["updated"]))
    except (KeyError, TypeError, ValueError):
        return None
    return max(0.0, (epochs - epoch) * float(per_epoch) - since.total_seconds())


def _has_result(path: str) -> bool:
    """Whether ``result.json`` exists with content (it is written atomically: present means complete)."""
    try:
        return os.path.getsize(path) > 2
    except OSError:
        return False
