"""Keeping a sweep's MLflow runs true from outside its tasks: replaying their buffers, closing stale runs."""

from __future__ import annotations

import logging
import os
import threading

from hpcvit.ledger import SweepDir, TaskDir
from hpcvit.states import TaskState
from hpcvit.tables import index_ranges
from hpcvit.tracking.task_run import has_buffer, sync_task

log = logging.getLogger(__name__)


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


def run_status(state: TaskState) -> str:
    """The MLflow run status of a task that ended in ``state``."""
    if state in (TaskState.COMPLETED, TaskState.STOPPED_EARLY):
        return "FINISHED"
    return {TaskState.FAILED: "FAILED", TaskState.RUNG_DONE: "SCHEDULED"}.get(state, "KILLED")


def close_stale_run(sweep_dir: SweepDir, index: int, state: TaskState) -> bool:
    """Close the run of a task whose record was stale (nobody was left to close it); True if it changed."""
    uri = sweep_dir.manifest.get("tracking_uri")
    run_id = sweep_dir.task(index).run_id()
    if not (uri and run_id):
        return False
    from hpcvit.tracking.sweep_run import terminate_run

    return terminate_run(uri, run_id, run_status(state), state)


class StartMark:
    """The launcher's word to MLflow that its task runs (again), seconds before the trainer itself opens the run.

    Made before the trainer starts, it imports MLflow and opens the store at once, in a thread, while the CPU
    is still free (:meth:`ready` waits for that, bounded); :meth:`send`, once state.json says RUNNING, then
    only has the two calls to make, so the two records agree within a fraction of a second instead of lagging
    by MLflow's start-up under the trainer's. :meth:`settle`, once the trainer has ended, puts the run right
    if that word arrived after the trainer's last.
    """

    def __init__(self, task: TaskDir, tags: dict[str, str]):
        self.task, self.tags, self.sent = task, tags, False
        self._prepared, self._go = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpcvit-start-mark", daemon=True)
        self._thread.start()

    def ready(self, wait_s: float) -> None:
        """Wait up to ``wait_s`` for MLflow to be imported and the store opened."""
        self._prepared.wait(wait_s)

    def send(self) -> None:
        """Say RUNNING now (the thread does, as soon as it is prepared)."""
        self._go.set()

    def _run(self) -> None:
        try:
            uri, run_id = self.task.sweep.manifest.get("tracking_uri"), self.task.run_id()
            if not (uri and run_id):
                return
            from mlflow.entities import RunTag

            from hpcvit.tracking import names
            from hpcvit.tracking.client import mlflow_client

            client = mlflow_client(uri)
            tags = [RunTag(k, v) for k, v in {names.STATE_TAG: str(TaskState.RUNNING), **self.tags}.items()]
        except Exception as exc:  # noqa: BLE001 - the trainer opens the run itself; this word only comes sooner
            log.warning("could not open MLflow for %s (%s: %s)", self.task.key, type(exc).__name__, exc)
            return
        finally:
            self._prepared.set()
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 5)  # Linux: this thread alone
        except OSError:
            pass
        self._go.wait()
        try:
            client.update_run(run_id, status="RUNNING")
            client.log_batch(run_id, tags=tags)
            self.sent = True
        except Exception as exc:  # noqa: BLE001
            log.warning("could not mark the MLflow run of %s running (%s: %s)", self.task.key, type(exc).__name__, exc)

    def settle(self, state: TaskState, only_here: bool = False, wait_s: float = 60.0) -> None:
        """After the trainer ended in ``state``: the run closed with that state, whatever arrived last; also when
        this word never went out if ``only_here`` (a state only the launcher knows, which the trainer never told)."""
        self._go.set()
        self._thread.join(wait_s)
        if self.sent or only_here:
            try:
                close_stale_run(self.task.sweep, self.task.index, state)
            except Exception as exc:  # noqa: BLE001 - status puts it right later
                log.warning("could not close the MLflow run of %s (%s: %s)", self.task.key, type(exc).__name__, exc)


def mark_submitted(sweep_dir: SweepDir, indices: list[int]) -> None:
    """The runs of tasks submitted again (``resume``): SCHEDULED, tagged SUBMITTED, as they wait in the queue."""
    uri = sweep_dir.manifest.get("tracking_uri")
    if not uri:
        return
    from hpcvit.tracking import names
    from hpcvit.tracking.children import each_call
    from hpcvit.tracking.client import mlflow_client

    client = mlflow_client(uri)

    def one(index: int) -> None:
        run_id = sweep_dir.task(index).run_id()
        if run_id:
            client.update_run(run_id, status="SCHEDULED")
            client.set_tag(run_id, names.STATE_TAG, str(TaskState.SUBMITTED))

    each_call(uri, one, indices)
