"""Turn a sweep's tasks into ONE submitit array job (Slurm) or a throttled set of local jobs."""

from __future__ import annotations

import contextlib
import os
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


def submit(sweep: SweepDir, indices: list[int], kind: Executor, spec: JobSpec) -> dict[int, str]:
    """Submit the given task indices as one array; record and return task index -> job id."""
    executor = make_executor(kind, sweep.submitit_dir, spec)
    detach = _detached_stdio(sweep.submitit_dir / "local-jobs.log") if kind == "local" else contextlib.nullcontext()
    with detach:
        jobs = executor.map_array(TaskLauncher(str(sweep.root)), indices)
    job_ids = {i: job.job_id for i, job in zip(indices, jobs)}
    sweep.record_submission(job_ids, kind)
    return job_ids


def sbatch_script(spec: JobSpec, folder: Path, n_tasks: int) -> str:
    """The sbatch script submitit writes for an array of ``n_tasks`` tasks (nothing is submitted)."""
    ex = make_executor("slurm", folder, spec)
    map_count = n_tasks if n_tasks > 1 else None
    return submitit_slurm._make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder,
                                              map_count=map_count, **ex.parameters)
