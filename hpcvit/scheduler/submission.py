"""Hand a sweep's tasks to the scheduler: one submitit array (several on Slurm past its array size), each task
a :class:`~hpcvit.scheduler.launch.TaskLauncher`, every array recorded in the ledger as it goes in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpcvit.ledger import SweepDir, TaskDir
from hpcvit.scheduler.adapter import SubmissionError, for_executor, refusal
from hpcvit.scheduler.launch import TaskLauncher
from hpcvit.config import JobSpec
from hpcvit.states import Executor

__all__ = ["PartialSubmission", "SubmissionError", "submit", "submit_after"]


class PartialSubmission(RuntimeError):
    """Some arrays of a submission went in, a later one failed; the ledger holds the ones that went in."""

    def __init__(self, submitted: dict[int, str], remaining: list[int], cause: BaseException):
        self.submitted, self.remaining = submitted, remaining
        super().__init__(f"submitted {len(submitted)} task(s), then sbatch failed for the other {len(remaining)} "
                         f"({str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__}); "
                         "`hpcvit resume` submits the rest")


def submit(sweep: SweepDir, indices: list[int], kind: Executor, spec: JobSpec,
           after: Callable[[TaskDir], Any] | None = None) -> dict[int, str]:
    """Submit the given task indices; return task index -> job id.

    ``after`` is what each task's launcher runs once its trainer has ended (a search's rung decision on the
    local executor); it must pickle.
    """
    scheduler = for_executor(kind)
    executor = scheduler.executor(sweep.submitit_dir, spec)
    chunks = scheduler.arrays(indices, spec)
    launcher = TaskLauncher(str(sweep.root), after=after)
    job_ids: dict[int, str] = {}
    for k, chunk in enumerate(chunks):
        stderr: list[str] = []
        try:
            with scheduler.submitting(sweep.submitit_dir, first=k == 0) as stderr:
                jobs = executor.map_array(launcher, chunk)
        except Exception as exc:
            if not job_ids:
                raise refusal(exc, stderr) from exc
            raise PartialSubmission(job_ids, [i for c in chunks[k:] for i in c], refusal(exc, stderr)) from exc
        ids = {i: job.job_id for i, job in zip(chunk, jobs)}
        sweep.record_submission(ids, kind)
        job_ids.update(ids)
    return job_ids


def submit_after(sweep: SweepDir, kind: Executor, fn: Callable[[], Any], after: list[str], spec: JobSpec,
                 name: str) -> str | None:
    """``fn()`` as a job of its own once every job in ``after`` has ended, whatever its outcome; its job id, or
    None on an executor without such jobs."""
    return for_executor(kind).after(sweep.submitit_dir, fn, after, spec, name)
