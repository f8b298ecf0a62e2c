"""Everything hpcvit says to Slurm and reads back, in one module.

The client commands (``squeue``, ``scontrol``, ``scancel``; ``sbatch`` through submitit), their parsers, the
Slurm state names and the sbatch options derived from a spec. Every command is an argument list (no shell);
a command that is missing or fails raises :class:`SlurmError` with a line that says what to do.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpcvit.config import JobSpec
from hpcvit.states import TaskState

SQUEUE_FORMAT = "%i|%T|%r"
"""Job id (``A_i`` for array tasks), state, reason: what :func:`queue_states` asks squeue for."""
DEFAULT_MAX_ARRAY_SIZE = 1001
"""Slurm's default ``MaxArraySize``, used when ``scontrol show config`` cannot be read."""
COMMAND_TIMEOUT_S = 60

# What ``squeue --format=%T`` says, as a task state (states not listed are taken as RUNNING: the job exists
# and is past the queue).
SLURM_STATES: dict[str, TaskState] = {
    "PENDING": TaskState.PENDING, "CONFIGURING": TaskState.RUNNING, "RUNNING": TaskState.RUNNING,
    "COMPLETING": TaskState.RUNNING, "SUSPENDED": TaskState.SUSPENDED, "STOPPED": TaskState.SUSPENDED,
    "REQUEUED": TaskState.REQUEUED, "REQUEUE_FED": TaskState.REQUEUED, "REQUEUE_HOLD": TaskState.HELD,
    "SPECIAL_EXIT": TaskState.HELD, "RESV_DEL_HOLD": TaskState.HELD, "PREEMPTED": TaskState.REQUEUED,
    "RESIZING": TaskState.RUNNING, "SIGNALING": TaskState.RUNNING, "STAGE_OUT": TaskState.RUNNING,
}


class SlurmError(RuntimeError):
    """A Slurm client command is missing or failed; ``str()`` is the one-line reason."""


def from_slurm(state: str) -> TaskState:
    """A Slurm job state (``squeue --format=%T``) as a task state."""
    return SLURM_STATES.get(state, TaskState.RUNNING)


HOLD_REASONS = ("launch failed requeued held", "job requeued in held state")
"""Reasons of a PENDING job that Slurm itself holds (a launch that failed on a node; ``scontrol requeuehold``):
it never starts until released, like ``scontrol hold``'s JobHeldUser/JobHeldAdmin."""


def held(state: str, reason: str) -> bool:
    """Whether a queued job is held: PENDING with a JobHeld* reason (``scontrol hold`` by a user or an admin) or
    one of :data:`HOLD_REASONS`."""
    return state == "PENDING" and (reason.startswith("JobHeld") or reason.strip().lower() in HOLD_REASONS)


def _run(args: list[str], what: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(args[0]) is None:
        raise SlurmError(f"{args[0]} not found: put the Slurm client tools on PATH (or use --executor local)")
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{args[0]} did not answer in {COMMAND_TIMEOUT_S} s; {what}") from None
    if proc.returncode != 0:
        raise SlurmError(f"{args[0]} failed ({proc.stderr.strip() or f'exit {proc.returncode}'}); {what}")
    return proc


# -- squeue --------------------------------------------------------------------------------------------------
def parse_squeue(stdout: str, job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """``squeue --array --format=%i|%T|%r`` output -> (Slurm state, reason) of each of ``job_ids`` (and of their
    array ids)."""
    wanted = set(job_ids) | {j.split("_")[0] for j in job_ids}
    states: dict[str, tuple[str, str]] = {}
    for line in stdout.splitlines():
        job, sep, rest = line.strip().partition("|")
        if sep and job in wanted:
            state, _, reason = rest.partition("|")
            states[job] = (state.strip(), reason.strip())
    return states


def queue_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """State of each listed Slurm job (``A_i`` for array tasks) from ONE squeue call; absent = not queued.

    Asks for all of the user's jobs rather than ``--jobs=...``: one id that has aged out of the
    controller makes squeue fail for the whole list, and a task wrongly reported gone would be resubmitted.
    """
    if not job_ids:
        return {}
    proc = _run(["squeue", "--noheader", "--array", "--me", f"--format={SQUEUE_FORMAT}"],
                "task states unknown, nothing was changed")
    return parse_squeue(proc.stdout, job_ids)


# -- scontrol and scancel --------------------------------------------------------------------------------------
def config() -> dict[str, str]:
    """``scontrol show config`` as a mapping (empty when scontrol is missing or fails)."""
    try:
        proc = _run(["scontrol", "show", "config"], "")
    except SlurmError:
        return {}
    out = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def max_array_size(spec: JobSpec, cluster: dict[str, str] | None = None) -> int:
    """Most tasks per array: the spec's ``resources.max_array_size``, else the cluster's MaxArraySize (an array
    holds indices 0 .. MaxArraySize - 1), else Slurm's default."""
    if spec.resources.max_array_size is not None:
        return spec.resources.max_array_size
    value = (config() if cluster is None else cluster).get("MaxArraySize", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_MAX_ARRAY_SIZE


def hostnames(nodelist: str) -> list[str]:
    """The node names of a compressed node list (``node[1-3]``), in order."""
    return _run(["scontrol", "show", "hostnames", nodelist],
                f"cannot expand SLURM_JOB_NODELIST={nodelist!r}").stdout.split()


def release(job_ids: list[str]) -> None:
    """``scontrol release``: held jobs may start again."""
    if job_ids:
        _run(["scontrol", "release", *job_ids], "the held jobs stay held")


def cancel(job_ids: list[str], check: bool = True) -> None:
    """``scancel`` the jobs (their processes get SIGTERM first); ``check=False`` ignores a job already gone."""
    if not job_ids:
        return
    try:
        _run(["scancel", *job_ids], "the jobs may still run")
    except SlurmError:
        if check:
            raise


# -- sbatch options ----------------------------------------------------------------------------------------
def mem_option(mem_gb: float) -> str:
    """``--mem`` in whole GB when it is a whole number, else in MB (rounded down)."""
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB"


def _site(spec: JobSpec) -> dict[str, Any]:
    r = spec.resources
    return {key: getattr(r, key) for key in ("partition", "account", "qos") if getattr(r, key)}


def array_parameters(spec: JobSpec) -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` arguments for every task of a sweep's arrays."""
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
        params["mem"] = mem_option(r.mem_gb)
    return {**params, **_site(spec)}


def dependent_parameters(spec: JobSpec, name: str, after: list[str]) -> dict[str, Any]:
    """A one-CPU, ten-minute job that starts once every job in ``after`` has ended, whatever its outcome."""
    return {"job_name": f"hpcvit-{spec.name}-{name}", "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 1,
            "time": 10, "stderr_to_stdout": True,
            "additional_parameters": {"dependency": "afterany:" + ":".join(after)}, **_site(spec)}


def executor(folder: Path, spec: JobSpec) -> Any:
    """submitit's Slurm executor for a sweep's arrays (requeued up to ``resources.max_requeues`` times)."""
    import submitit

    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=spec.resources.max_requeues)
    ex.update_parameters(**array_parameters(spec))
    return ex


def dependent_executor(folder: Path, spec: JobSpec, name: str, after: list[str]) -> Any:
    """submitit's Slurm executor for one job run after ``after`` (never requeued)."""
    import submitit

    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=0)
    ex.update_parameters(**dependent_parameters(spec, name, after))
    return ex


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """fd 2 into a buffer while sbatch runs (submitit lets its stderr through); the lines, for the error."""
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


def sbatch_script(spec: JobSpec, folder: Path, n_tasks: int) -> str:
    """The sbatch script submitit writes for an array of ``n_tasks`` tasks (nothing is submitted, and no Slurm
    is needed here: a login node or a laptop shows the same script).

    submitit has no public call that renders its script without submitting it; this is the one place that
    uses its private renderer, with the command line its executor runs, so that ``submit --dry-run`` shows the
    very text ``sbatch`` would get (``tests/golden/sbatch_array.sh``; ``tests/test_slurm.py`` submits it).
    """
    from submitit.slurm import slurm as submitit_slurm

    folder = Path(folder).expanduser().absolute()
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return submitit_slurm._make_sbatch_string(command=command, folder=folder,
                                              map_count=n_tasks if n_tasks > 1 else None, **array_parameters(spec))


def sbatch_scripts(spec: JobSpec, folder: Path, n_tasks: int, cluster: dict[str, str] | None = None
                   ) -> list[tuple[range, str]]:
    """(task indices, sbatch script) of each array a sweep of ``n_tasks`` is submitted as (nothing is submitted)."""
    size = max_array_size(spec, cluster)
    return [(range(lo, min(lo + size, n_tasks)), sbatch_script(spec, folder, min(size, n_tasks - lo)))
            for lo in range(0, n_tasks, size)]
