"""Turn a sweep's tasks into ONE submitit array job (Slurm) or a throttled set of local jobs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm import slurm as submitit_slurm

from hpcvit.launch import TaskLauncher
from hpcvit.ledger import SweepDir
from hpcvit.spec import JobSpec
from hpcvit.states import Executor


def slurm_parameters(spec: JobSpec) -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` arguments for every task of the sweep."""
    r = spec.resources
    params: dict[str, Any] = {
        "job_name": f"hpcvit-{spec.name}", "nodes": r.nodes, "ntasks_per_node": 1,
        "cpus_per_task": r.cpus_per_task, "time": r.time_min, "signal_delay_s": r.signal_delay_s,
        "array_parallelism": r.array_parallelism, "stderr_to_stdout": True,
        # --requeue: a site default of JobRequeue=0 must not turn a preemption into a failure.
        "additional_parameters": {"requeue": True, **r.sbatch_extra},
    }
    if r.nodes > 1:
        # one launcher per node: one that exits with an error (it cannot start, or the task failed) ends the
        # others, so that no node trains on, or waits in the rendezvous, alone
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    if r.gpus_per_node:
        params["gpus_per_node"] = r.gpus_per_node
    if r.mem_gb is not None:
        params["mem"] = submitit_slurm._convert_mem(r.mem_gb)
    for key in ("partition", "account", "qos"):
        if getattr(r, key):
            params[key] = getattr(r, key)
    return params


def make_executor(kind: Executor, folder: Path, spec: JobSpec) -> submitit.Executor:
    r = spec.resources
    if kind == "slurm":
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=r.max_requeues)
        ex.update_parameters(**slurm_parameters(spec))
        return ex
    if r.nodes > 1:
        raise ValueError("resources.nodes > 1 needs the slurm executor (the local executor has one node)")
    ex = submitit.LocalExecutor(folder=folder, max_num_timeout=r.max_requeues)
    ex.update_parameters(timeout_min=r.time_min, signal_delay_s=r.signal_delay_s, gpus_per_node=r.gpus_per_node,
                         stderr_to_stdout=True)
    return ex


@contextlib.contextmanager
def _detached_stdio(log: Path) -> Iterator[None]:
    """Point fds 0-2 away from the terminal/pipe while local jobs are forked, so that they outlive the
    submitter without holding its output open (``hpcvit submit | tee`` would wait for the whole sweep)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    with open(os.devnull, "rb") as null, open(log, "ab") as out:
        os.dup2(null.fileno(), 0)
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    try:
        yield
    finally:
        for fd, copy in zip((0, 1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


SLURM_DEFAULT_MAX_ARRAY_SIZE = 1001


def slurm_config() -> dict[str, str]:
    """``scontrol show config`` as a mapping (empty when scontrol is missing or fails)."""
    if shutil.which("scontrol") is None:
        return {}
    try:
        proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    out = {}
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def max_array_size(spec: JobSpec, config: dict[str, str] | None = None) -> int:
    """Most tasks per array: the spec's ``resources.max_array_size``, else the cluster's MaxArraySize (an array
    holds indices 0 .. MaxArraySize - 1), else Slurm's default."""
    if spec.resources.max_array_size is not None:
        return spec.resources.max_array_size
    value = (slurm_config() if config is None else config).get("MaxArraySize", "")
    return int(value) if value.isdigit() and int(value) > 0 else SLURM_DEFAULT_MAX_ARRAY_SIZE


def array_chunks(indices: list[int], size: int) -> list[list[int]]:
    """``indices`` cut into arrays of at most ``size`` tasks, in order."""
    return [indices[i:i + size] for i in range(0, len(indices), size)]


class SubmissionError(RuntimeError):
    """The scheduler refused a submission; ``str()`` is its one-line reason."""


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """fd 2 into a buffer while sbatch runs (submitit lets its stderr through); the lines, for the error."""
    import tempfile

    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            lines.extend(buf.read().decode(errors="replace").splitlines())


def _refusal(exc: BaseException, stderr: list[str] | None = None) -> SubmissionError:
    lines = [line.strip() for line in [*(stderr or []), *str(exc).splitlines()] if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return SubmissionError(f"the scheduler refused the submission: {(errors or lines or [type(exc).__name__])[-1]}")


class PartialSubmission(RuntimeError):
    """Some arrays of a submission went in, a later one failed; the ledger holds the ones that went in."""

    def __init__(self, submitted: dict[int, str], remaining: list[int], cause: BaseException):
        self.submitted, self.remaining = submitted, remaining
        super().__init__(f"submitted {len(submitted)} task(s), then sbatch failed for the other {len(remaining)} "
                         f"({str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__}); "
                         "`hpcvit resume` submits the rest")


def submit(sweep: SweepDir, indices: list[int], kind: Executor, spec: JobSpec) -> dict[int, str]:
    """Submit the given task indices as one array (several on Slurm when they exceed its array size); record
    each array in the ledger as it goes in and return task index -> job id."""
    executor = make_executor(kind, sweep.submitit_dir, spec)
    detach = _detached_stdio(sweep.submitit_dir / "local-jobs.log") if kind == "local" else contextlib.nullcontext()
    chunks = array_chunks(indices, max_array_size(spec)) if kind == "slurm" else [indices]
    job_ids: dict[int, str] = {}
    for k, chunk in enumerate(chunks):
        stderr: list[str] = []
        try:
            with detach if k == 0 else contextlib.nullcontext(), \
                    (_captured_stderr() if kind == "slurm" else contextlib.nullcontext([])) as stderr:
                jobs = executor.map_array(TaskLauncher(str(sweep.root)), chunk)
        except Exception as exc:
            if not job_ids:
                raise _refusal(exc, stderr) from exc
            raise PartialSubmission(job_ids, [i for c in chunks[k:] for i in c], _refusal(exc, stderr)) from exc
        ids = {i: job.job_id for i, job in zip(chunk, jobs)}
        sweep.record_submission(ids, kind)
        job_ids.update(ids)
    return job_ids


def submit_after(sweep: SweepDir, fn: Any, after: list[str], spec: JobSpec, name: str) -> str:
    """A one-CPU Slurm job running ``fn()`` once every job in ``after`` has ended, whatever its outcome
    (``--dependency=afterany:...``); its job id."""
    r = spec.resources
    ex = submitit.SlurmExecutor(folder=sweep.submitit_dir / name, max_num_timeout=0)
    params: dict[str, Any] = {"job_name": f"hpcvit-{spec.name}-{name}", "nodes": 1, "ntasks_per_node": 1,
                              "cpus_per_task": 1, "time": 10, "stderr_to_stdout": True,
                              "additional_parameters": {"dependency": "afterany:" + ":".join(after)}}
    for key in ("partition", "account", "qos"):
        if getattr(r, key):
            params[key] = getattr(r, key)
    ex.update_parameters(**params)
    stderr: list[str] = []
    try:
        with _captured_stderr() as stderr:
            return ex.submit(fn).job_id
    except Exception as exc:
        raise _refusal(exc, stderr) from exc


def sbatch_scripts(spec: JobSpec, folder: Path, n_tasks: int, config: dict[str, str] | None = None
                   ) -> list[tuple[range, str]]:
    """(task indices, sbatch script) of each array a sweep of ``n_tasks`` is submitted as (nothing is submitted)."""
    size = max_array_size(spec, config)
    return [(range(lo, min(lo + size, n_tasks)), sbatch_script(spec, folder, min(size, n_tasks - lo)))
            for lo in range(0, n_tasks, size)]


def sbatch_script(spec: JobSpec, folder: Path, n_tasks: int) -> str:
    """The sbatch script submitit writes for an array of ``n_tasks`` tasks (nothing is submitted)."""
    ex = make_executor("slurm", folder, spec)
    map_count = n_tasks if n_tasks > 1 else None
    return submitit_slurm._make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder,
                                              map_count=map_count, **ex.parameters)
