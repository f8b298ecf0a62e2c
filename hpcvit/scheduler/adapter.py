"""One small adapter per executor: what differs between this machine and a Slurm cluster, and nothing else.

Submission, status, resume and cancel ask :func:`for_executor` instead of testing the executor's name: how tasks
are handed over (submitit's executor, arrays, what happens to the submitter's output), what the queue says of
them, the true state of a task from its record and what is alive, how a task is stopped or released, and who
runs a job after others have ended.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from hpcvit.scheduler import local, slurm
from hpcvit.config import JobSpec
from hpcvit.states import Executor, TaskState

QueueEntry = tuple[str, str]
"""(the scheduler's state of a job, its reason) as :meth:`Scheduler.queue` reports it."""

_STALE = (TaskState.RUNNING, TaskState.QUEUED, TaskState.SUBMITTED)


class SubmissionError(RuntimeError):
    """The scheduler refused a submission; ``str()`` is its one-line reason."""


def refusal(exc: BaseException, stderr: list[str] | None = None) -> SubmissionError:
    """The one line that says why a submission failed: the last line naming an error, from what the scheduler
    printed or the exception."""
    lines = [line.strip() for line in [*(stderr or []), *str(exc).splitlines()] if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return SubmissionError(f"the scheduler refused the submission: {(errors or lines or [type(exc).__name__])[-1]}")


class Scheduler:
    """What every executor answers; :class:`LocalScheduler` and :class:`SlurmScheduler` are the two there are."""

    kind: ClassVar[Executor]
    title: ClassVar[str]
    """How messages name the scheduler (``Slurm: JobHeldUser``)."""
    has_after_jobs: ClassVar[bool] = False
    multi_node: ClassVar[bool] = False
    """Whether a task may span several nodes (``resources.nodes`` > 1)."""
    """Whether :meth:`after` submits jobs that wait for others (else the last task's launcher runs it)."""
    preview_note: ClassVar[str] = "for --executor slurm"
    """What ``submit --dry-run`` says of the sbatch script it shows."""
    dry_run_note: ClassVar[str] = ": the script is what --executor slurm would submit"
    """The end of ``submit --dry-run``'s last line."""

    def executor(self, folder: Path, spec: JobSpec) -> Any:
        """The submitit executor that submits a sweep's tasks."""
        raise NotImplementedError

    def arrays(self, indices: list[int], spec: JobSpec) -> list[list[int]]:
        """``indices`` as the arrays they are submitted in, in order."""
        return [indices]

    def submitting(self, folder: Path, first: bool) -> contextlib.AbstractContextManager[list[str]]:
        """Around one array's submission: yields a list that collects what the scheduler printed on stderr."""
        return contextlib.nullcontext([])

    def plan(self, n: int, spec: JobSpec, rungs: bool) -> str:
        """How ``n`` tasks go to the scheduler, in one line (``rungs``: the first rung of an adaptive search)."""
        raise NotImplementedError

    def queue(self, job_ids: list[str]) -> dict[str, QueueEntry]:
        """The scheduler's view of the given jobs in one call; a job absent from it is not queued."""
        return {}

    def true_state(self, recorded: TaskState, *, queue_entry: QueueEntry | None, launcher_alive: Callable[[], bool],
                   job_alive: Callable[[], bool], trainer_alive: Callable[[], bool],
                   stop_cause: str | None) -> TaskState:
        """The state of a task that has no result yet, from its record and what is alive."""
        raise NotImplementedError

    def stop(self, tasks: list[tuple[str, dict[str, Any]]]) -> None:
        """Stop the tasks given as (job id, state.json record): their trainers get SIGTERM, save and exit."""
        raise NotImplementedError

    def release(self, job_ids: list[str]) -> None:
        """Let held jobs start again."""

    def cancel_jobs(self, job_ids: list[str]) -> None:
        """Take helper jobs (a search's decision job) out of the queue; one already gone is no error."""

    def after(self, folder: Path, fn: Callable[[], Any], job_ids: list[str], spec: JobSpec, name: str) -> str | None:
        """Run ``fn`` as a job of its own once every job of ``job_ids`` has ended; its job id, or None where
        the executor has no such jobs (then the last task's launcher runs what comes after)."""
        return None


class LocalScheduler(Scheduler):
    """submitit's local executor: tasks are processes of this machine, ``array_parallelism`` kept by slot locks."""

    kind = "local"
    title = "local executor"

    def executor(self, folder: Path, spec: JobSpec) -> Any:
        import submitit

        r = spec.resources
        if r.nodes > 1:
            raise ValueError("resources.nodes > 1 needs the slurm executor (the local executor has one node)")
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=r.max_requeues)
        ex.update_parameters(timeout_min=r.time_min, signal_delay_s=r.signal_delay_s,
                             gpus_per_node=r.gpus_per_node, stderr_to_stdout=True)
        return ex

    @contextlib.contextmanager
    def submitting(self, folder: Path, first: bool) -> Iterator[list[str]]:
        # the jobs are forked now: they must not hold the submitter's terminal or pipe open
        with local.detached_stdio(folder / "local-jobs.log") if first else contextlib.nullcontext():
            yield []

    def plan(self, n: int, spec: JobSpec, rungs: bool) -> str:
        return f"{n} task(s) on the local executor, at most {spec.resources.array_parallelism} at once"

    def true_state(self, recorded: TaskState, *, queue_entry: QueueEntry | None, launcher_alive: Callable[[], bool],
                   job_alive: Callable[[], bool], trainer_alive: Callable[[], bool],
                   stop_cause: str | None) -> TaskState:
        if recorded in (TaskState.RUNNING, TaskState.QUEUED):
            if launcher_alive():
                return recorded
            return TaskState.RUNNING if trainer_alive() else TaskState.LOST
        if recorded in (TaskState.SUBMITTED, TaskState.PREEMPTED):
            if job_alive():
                return TaskState.PENDING
            return TaskState.LOST if recorded == TaskState.SUBMITTED else recorded
        return recorded

    def stop(self, tasks: list[tuple[str, dict[str, Any]]]) -> None:
        for job_id, record in tasks:
            local.stop_task(record, job_id)


class SlurmScheduler(Scheduler):
    """A Slurm cluster through its client tools: arrays no larger than its MaxArraySize, one squeue per look."""

    kind = "slurm"
    title = "Slurm"
    has_after_jobs = True
    multi_node = True
    preview_note = "would be submitted"
    dry_run_note = ""

    def executor(self, folder: Path, spec: JobSpec) -> Any:
        return slurm.executor(folder, spec)

    def arrays(self, indices: list[int], spec: JobSpec) -> list[list[int]]:
        size = slurm.max_array_size(spec)
        return [indices[i:i + size] for i in range(0, len(indices), size)]

    def submitting(self, folder: Path, first: bool) -> contextlib.AbstractContextManager[list[str]]:
        return slurm.captured_stderr()  # sbatch's refusal, for a one-line error

    def plan(self, n: int, spec: JobSpec, rungs: bool) -> str:
        size = slurm.max_array_size(spec)
        source = "resources.max_array_size" if spec.resources.max_array_size else "the cluster's MaxArraySize"
        later = " (the first rung of the search; each later rung is one array of its survivors)" if rungs else ""
        return (f"{n} task(s) as {-(-n // size)} Slurm array(s) of at most {size} ({source}), each running at "
                f"most {spec.resources.array_parallelism} at once{later}")

    def queue(self, job_ids: list[str]) -> dict[str, QueueEntry]:
        return slurm.queue_states(job_ids)

    def true_state(self, recorded: TaskState, *, queue_entry: QueueEntry | None, launcher_alive: Callable[[], bool],
                   job_alive: Callable[[], bool], trainer_alive: Callable[[], bool],
                   stop_cause: str | None) -> TaskState:
        """A task stopped at a checkpoint whose job left the queue was not requeued: after a time-limit warning
        that is TIMEOUT (submitit's requeues are used up); after a SIGTERM it is CANCELLED (``scancel``; a
        preemption or ``scontrol requeue`` puts the job back in the queue)."""
        if queue_entry is not None:
            state, reason = queue_entry
            queued = TaskState.HELD if slurm.held(state, reason) else slurm.from_slurm(state)
            if recorded == TaskState.PREEMPTED and queued != TaskState.RUNNING:
                return TaskState.REQUEUED
            return queued
        if recorded in _STALE:
            return TaskState.RUNNING if trainer_alive() else TaskState.LOST
        if recorded == TaskState.PREEMPTED:
            return TaskState.TIMEOUT if stop_cause == "time_limit" else TaskState.CANCELLED
        return recorded

    def stop(self, tasks: list[tuple[str, dict[str, Any]]]) -> None:
        slurm.cancel([job_id for job_id, _ in tasks])

    def release(self, job_ids: list[str]) -> None:
        slurm.release(job_ids)

    def cancel_jobs(self, job_ids: list[str]) -> None:
        slurm.cancel(job_ids, check=False)

    def after(self, folder: Path, fn: Callable[[], Any], job_ids: list[str], spec: JobSpec, name: str) -> str | None:
        ex = slurm.dependent_executor(folder / name, spec, name, job_ids)
        stderr: list[str] = []
        try:
            with slurm.captured_stderr() as stderr:
                return ex.submit(fn).job_id
        except Exception as exc:
            raise refusal(exc, stderr) from exc


SCHEDULERS: dict[str, Scheduler] = {s.kind: s for s in (LocalScheduler(), SlurmScheduler())}


def for_executor(kind: str) -> Scheduler:
    """The scheduler of an executor name (``local`` or ``slurm``)."""
    try:
        return SCHEDULERS[kind]
    except KeyError:
        raise ValueError(f"unknown executor {kind!r}; known: {', '.join(SCHEDULERS)}") from None
