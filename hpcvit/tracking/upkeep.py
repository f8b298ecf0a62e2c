"""Keeping a sweep's MLflow runs true from outside its tasks: replaying their buffers, closing stale runs."""

from __future__ import annotations

from hpcvit.ledger import SweepDir
from hpcvit.states import TaskState
from hpcvit.tables import index_ranges
from hpcvit.tracking.task_run import has_buffer, sync_task


def pending_buffers(sweep_dir: SweepDir) -> list[int]:
    """The tasks that hold tracking calls not yet sent."""
    return [task.index for task in sweep_dir.tasks() if has_buffer(task)]


def replay_buffers(sweep_dir: SweepDir) -> dict[int, int]:
    """Send every task's buffered calls, in order; task index -> calls sent (tasks with none, or whose own
    process is replaying them now, left out). A transient error (the store is still away) is raised."""
    m = sweep_dir.manifest
    sent = {}
    for index in pending_buffers(sweep_dir):
        n = sync_task(m["tracking_uri"], m["experiment_id"], m["parent_run_id"], sweep_dir.task(index))
        if n:
            sent[index] = n
    return sent


def buffered_note(sweep_dir: SweepDir) -> str | None:
    """One line naming the tasks whose tracking calls wait in buffers, or None."""
    waiting = pending_buffers(sweep_dir) if sweep_dir.manifest.get("tracking_uri") else []
    if not waiting:
        return None
    return (f"tracking: {len(waiting)} task(s) hold calls MLflow has not received yet ({index_ranges(waiting)}); "
            f"they are sent when the store answers again, or by: hpcvit sync {sweep_dir.sweep_id}")


def close_stale_run(sweep_dir: SweepDir, index: int, state: TaskState) -> bool:
    """Close the run of a task whose record was stale (nobody was left to close it); True if it changed."""
    uri = sweep_dir.manifest.get("tracking_uri")
    run_id = sweep_dir.task(index).run_id()
    if not (uri and run_id):
        return False
    from hpcvit.tracking.sweep_run import terminate_run

    return terminate_run(uri, run_id, "FAILED" if state == TaskState.FAILED else "KILLED", state)
