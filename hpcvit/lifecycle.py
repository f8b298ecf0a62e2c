"""A sweep's tasks after submission: their real state, resume of the unfinished, cancel.

States come from the ledger (state.json per task, written by its launcher) checked against what is
alive: one ``squeue`` call for all Slurm jobs of the sweep, ``/proc`` for local ones. A task whose record
says RUNNING but whose process or job is gone is LOST (killed without a chance to record it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcvit.manifest import SweepDir, TaskDir, process_alive, process_start_time, read_json

FINAL_OK = {"COMPLETED"}
RESUMABLE = {"FAILED", "CANCELLED", "PREEMPTED", "LOST", "NEW"}


@dataclass
class TaskStatus:
    index: int
    label: str
    state: str
    job_id: str
    executor: str
    restarts: int
    epoch: int | None
    epochs: int | None
    metric: str | None
    best_metric: float | None
    message: str
    log: Path


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """State of each listed Slurm job (``A_i`` for array tasks) from ONE squeue call; absent = not queued.

    Asks for all of the user's jobs rather than ``--jobs=...``: one id that has aged out of the
    controller makes squeue fail for the whole list, and a task wrongly reported gone would be resubmitted.
    """
    if not job_ids:
        return {}
    if shutil.which("squeue") is None:
        raise RuntimeError("squeue not found: put the Slurm client tools on PATH (or use --executor local)")
    proc = subprocess.run(["squeue", "--noheader", "--array", "--me", "--format=%i|%T"],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"squeue failed ({proc.stderr.strip()}); task states unknown, nothing was changed")
    wanted = set(job_ids) | {j.split("_")[0] for j in job_ids}
    states: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job in wanted:
            states[job] = state
    return states


def _local_alive(job_id: str) -> bool:
    return job_id.isdigit() and process_start_time(int(job_id)) is not None


def task_statuses(sweep: SweepDir) -> list[TaskStatus]:
    labels = sweep.manifest.get("labels", [])
    latest = sweep.latest_jobs()
    queued = squeue_states([j for j, ex in latest.values() if ex == "slurm"])
    out = []
    for task in sweep.tasks():
        state = task.state()
        progress = task.progress()
        job_id, executor = latest.get(task.index, ("", ""))
        recorded = state.get("state", "SUBMITTED" if job_id else "NEW")
        if read_json(task.path / "result.json"):
            effective = "COMPLETED"
        elif executor == "slurm":
            in_queue = queued.get(job_id)
            if in_queue:
                effective = in_queue if recorded != "PREEMPTED" or in_queue == "RUNNING" else "REQUEUED"
            else:
                effective = "LOST" if recorded in ("RUNNING", "QUEUED", "SUBMITTED") else recorded
        elif executor == "local":
            if recorded in ("RUNNING", "QUEUED"):
                effective = recorded if process_alive(state.get("pid"), state.get("pid_start")) else "LOST"
            elif recorded == "SUBMITTED" or recorded == "PREEMPTED":
                effective = "PENDING" if _local_alive(job_id) else ("LOST" if recorded == "SUBMITTED" else recorded)
            else:
                effective = recorded
        else:
            effective = recorded
        out.append(TaskStatus(
            index=task.index, label=labels[task.index] if task.index < len(labels) else "", state=effective,
            job_id=job_id, executor=executor, restarts=int(state.get("restarts", 0)),
            epoch=progress.get("epoch"), epochs=progress.get("epochs"), metric=progress.get("metric"),
            best_metric=progress.get("best_metric"), message=state.get("message", ""), log=task.log))
    return out


def _close_stale_run(sweep: SweepDir, task: TaskDir, state: str) -> bool:
    run_file = task.path / "mlflow_run_id"
    uri = sweep.manifest.get("tracking_uri")
    if not (uri and run_file.exists()):
        return False
    from hpcvit.tracking import terminate_run

    return terminate_run(uri, run_file.read_text().strip(), "KILLED" if state != "FAILED" else "FAILED", state)


def close_lost_runs(sweep: SweepDir, statuses: list[TaskStatus]) -> int:
    """Mark the MLflow runs of LOST tasks KILLED (tag ``hpcvit.state=LOST``): a killed process cannot do it."""
    closed = 0
    for s in statuses:
        if s.state == "LOST":
            closed += _close_stale_run(sweep, sweep.task(s.index), "LOST")
    return closed


def resume(sweep: SweepDir, executor: str | None = None) -> tuple[list[int], dict[int, str]]:
    """Resubmit, as one new array, every task that is neither finished nor queued/running.

    Holds the sweep's resume lock while it decides and submits, so two ``resume`` calls at once cannot
    submit a task twice: the second sees the first one's submission as queued or running.
    """
    from hpcvit.submission import submit

    with sweep.lock("resume"):
        statuses = task_statuses(sweep)
        todo = [s.index for s in statuses if s.state in RESUMABLE]
        if not todo:
            return [], {}
        for s in statuses:
            if s.state in RESUMABLE:
                task = sweep.task(s.index)
                _close_stale_run(sweep, task, s.state)
                (task.path / "cancel").unlink(missing_ok=True)
                if task.path.exists():
                    task.write_state(state="SUBMITTED", message=f"resubmitted after {s.state}")
        kind = executor or sweep.manifest["executor"]
        job_ids = submit(sweep, todo, kind, sweep.run_spec(todo[0]))
        if kind != sweep.manifest["executor"]:
            sweep.update_manifest(executor=kind)
        return todo, job_ids


def cancel(sweep: SweepDir) -> list[int]:
    """Stop every unfinished task; the trainers save a checkpoint first, so ``resume`` continues them."""
    statuses = [s for s in task_statuses(sweep) if s.state not in FINAL_OK | RESUMABLE]
    for s in statuses:
        task = sweep.task(s.index)
        task.path.mkdir(parents=True, exist_ok=True)
        (task.path / "cancel").write_text("cancelled by user\n")
    slurm_jobs = [s.job_id for s in statuses if s.executor == "slurm"]
    if slurm_jobs:
        subprocess.run(["scancel", *slurm_jobs], check=True, timeout=60)
    for s in statuses:
        if s.executor != "local":
            continue
        state: dict[str, Any] = sweep.task(s.index).state()
        pgid = state.get("trainer_pgid")
        if pgid and process_alive(state.get("pid"), state.get("pid_start")):
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        elif s.job_id.isdigit() and _local_alive(s.job_id):
            os.kill(int(s.job_id), signal.SIGTERM)
    return [s.index for s in statuses]
