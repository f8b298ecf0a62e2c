"""Every environment variable hpcvit reads inside a job, in one place.

Slurm (``SLURM_*``), submitit (``SUBMITIT_EXECUTOR``), torchrun (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``) and hpcvit's own launcher (``HPCVIT_RESTARTS``) each tell a process where it runs. The
launcher and the trainer read them through :class:`JobEnv` only, so that a missing or odd value fails in one
place with a message that says what to do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

RESTARTS_VAR = "HPCVIT_RESTARTS"
"""Set by the launcher for the trainer: how many times this task was started before (one count everywhere)."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={raw!r} is not an integer; unset it or fix the "
                           "job script that sets it") from None


@dataclass(frozen=True)
class JobEnv:
    """What the scheduler and the launcher tell a process about where it runs."""

    executor: str = "local"
    """``SUBMITIT_EXECUTOR``: ``slurm`` inside a Slurm job submitted by submitit, else ``local``."""
    job_id: str = ""
    """``SLURM_JOB_ID``: this allocation's id (an array task has its own)."""
    array_job_id: str = ""
    """``SLURM_ARRAY_JOB_ID``: the id of the array this task belongs to (empty outside arrays)."""
    array_task_id: int | None = None
    """``SLURM_ARRAY_TASK_ID``."""
    slurm_restart_count: int = 0
    """``SLURM_RESTART_COUNT``: Slurm's requeues of this job id (a ``resume`` submits a new id at 0)."""
    nodelist: str = ""
    """``SLURM_JOB_NODELIST``: the allocation's nodes, in Slurm's compressed form."""
    node_rank: int = 0
    """``SLURM_NODEID``: this node's index in the allocation."""
    restarts: int = 0
    """``HPCVIT_RESTARTS``: previous starts of this task, counted by its launcher across requeues and resumes."""
    rank: int = 0
    """``RANK``: global rank of this trainer process (torchrun)."""
    local_rank: int = 0
    """``LOCAL_RANK``: rank on this node (selects the GPU)."""
    world_size: int = 1
    """``WORLD_SIZE``: trainer processes of the task."""
    distributed: bool = False
    """Whether torchrun started this process (``MASTER_ADDR`` set), so a process group must be formed."""
    omp_threads: int = 1
    """``OMP_NUM_THREADS``: CPU threads per trainer process (set by the launcher from ``cpus_per_task``)."""

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None) -> JobEnv:
        env = os.environ if env is None else env
        array_task = env.get("SLURM_ARRAY_TASK_ID")
        return cls(
            executor=env.get("SUBMITIT_EXECUTOR", "local"),
            job_id=env.get("SLURM_JOB_ID", ""),
            array_job_id=env.get("SLURM_ARRAY_JOB_ID", ""),
            array_task_id=_int(env, "SLURM_ARRAY_TASK_ID", 0) if array_task else None,
            slurm_restart_count=_int(env, "SLURM_RESTART_COUNT", 0),
            nodelist=env.get("SLURM_JOB_NODELIST", ""),
            node_rank=_int(env, "SLURM_NODEID", 0),
            restarts=_int(env, RESTARTS_VAR, 0),
            rank=_int(env, "RANK", 0),
            local_rank=_int(env, "LOCAL_RANK", 0),
            world_size=_int(env, "WORLD_SIZE", 1),
            distributed="MASTER_ADDR" in env or _int(env, "WORLD_SIZE", 1) > 1,
            omp_threads=max(1, _int(env, "OMP_NUM_THREADS", 1)),
        )

    @property
    def on_slurm(self) -> bool:
        return self.executor == "slurm"

    @property
    def scheduler_job(self) -> str:
        """The job id to show for this task: the array's id when it is an array task, else the job's."""
        return self.array_job_id or self.job_id

    @property
    def is_main(self) -> bool:
        return self.rank == 0
