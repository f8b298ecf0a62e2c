"""A task's child run, continued by every requeue and resume, that survives tracking outages."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hpcvit import fsio
from hpcvit.ledger import TaskDir
from hpcvit.rngs import host_generators_kept
from hpcvit.tracking import names
from hpcvit.tracking.client import mlflow_client
from hpcvit.tracking.outage import is_transient

log = logging.getLogger(__name__)


class TaskTracker:
    """The child run of one task (made at submit), continued by rank 0 of every (re)start of the task.

    When the tracking store is unreachable, training goes on: every call is appended to the task's
    ``tracking_buffer.jsonl`` (and retried at most once a minute); the next successful call, the task's end,
    ``hpcvit sync`` and the sweep's summary replay the buffer in order. Replays are idempotent (epochs already
    logged are skipped, params logged once) and safe while the task appends: the buffer is moved aside under a
    lock before it is read, so a line appended meanwhile starts a new buffer, replayed next.
    """

    RETRY_S = 60.0

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, task: TaskDir, tags: dict[str, str],
                 connect: bool = True):
        self.uri = uri
        self._client: Any = None
        self.task = task
        self.buffer = task.tracking_buffer
        self._open_args = {"experiment_id": experiment_id, "parent_run_id": parent_run_id, "task_key": task.key,
                           "run_name": task.run_name, "tags": tags}
        self.run_id: str | None = None
        self.resumed = task.run_opened()
        self.last_epoch_logged = -1
        self._offline_since: float | None = None
        if connect:
            self._call("open", **self._open_args)

    @property
    def client(self) -> Any:
        """The MLflow client, made on first use inside the buffered path (a SQLite store checks its schema)."""
        if self._client is None:
            self._client = mlflow_client(self.uri)
        return self._client

    # -- the operations, as replayed from the buffer ----------------------------------------------
    def _op_open(self, experiment_id: str, parent_run_id: str, task_key: str, run_name: str,
                 tags: dict[str, str]) -> None:
        from mlflow.entities import RunStatus

        self._attach(experiment_id, parent_run_id, task_key, run_name)
        self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        self._op_tags(tags)
        if not self.task.run_opened():
            self.task.write_run_id(self.run_id)

    def _attach(self, experiment_id: str, parent_run_id: str, task_key: str, run_name: str, **_: Any) -> None:
        """Find the task's run and the last epoch it holds."""
        run_id = self.task.run_id()
        if run_id is None:  # a sweep whose runs were not made at submit
            found = self.client.search_runs([experiment_id], f"tags.`{names.TASK_KEY_TAG}` = '{task_key}'",
                                            max_results=1)
            run_id = found[0].info.run_id if found else None
        if run_id is None:
            run_id = self.client.create_run(experiment_id, run_name=run_name, tags={
                names.PARENT_TAG: parent_run_id, names.TASK_KEY_TAG: task_key}).info.run_id
        self.run_id = run_id
        history = self.client.get_metric_history(run_id, "val_loss")
        self.last_epoch_logged = max((m.step for m in history), default=-1)

    def _op_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            try:
                self.client.log_batch(self.run_id, params=new[i:i + 100])
            except MlflowException:
                # a retried batch that had committed is refused; the same values already there are success
                now = self.client.get_run(self.run_id).data.params
                if any(now.get(p.key) != p.value for p in new[i:i + 100]):
                    raise

    def _op_epoch(self, epoch: int, metrics: dict[str, float], ts: int) -> None:
        from mlflow.entities import Metric

        if epoch <= self.last_epoch_logged:
            return
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, epoch) for k, v in metrics.items()])
        self.last_epoch_logged = epoch

    def _op_final(self, metrics: dict[str, float], step: int, ts: int) -> None:
        from mlflow.entities import Metric

        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])

    def _op_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _op_artifact(self, path: str, artifact_path: str | None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def _op_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def _op_end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)

    # -- buffering ----------------------------------------------------------------------------------
    @property
    def _replaying(self) -> Path:
        return replaying(self.buffer)

    def _lock(self, what: str) -> Path:
        return self.buffer.with_name(f".{self.buffer.name}.{what}.lock")

    def _append(self, op: str, kwargs: dict[str, Any]) -> None:
        with fsio.file_lock(self._lock("append")):
            fsio.append_line(self.buffer, json.dumps({"op": op, **kwargs}))

    def _call(self, op: str, **kwargs: Any) -> None:
        with host_generators_kept():  # MLflow's retry jitter draws from them
            self._dispatch(op, **kwargs)

    def _dispatch(self, op: str, **kwargs: Any) -> None:
        if self._offline_since is not None and time.monotonic() - self._offline_since < self.RETRY_S:
            self._append(op, kwargs)
            return
        try:
            if self.flush() is None:  # another process replays this task's buffer: this call goes after it
                self._append(op, kwargs)
                return
            getattr(self, f"_op_{op}")(**kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._offline_since = time.monotonic()
            log.warning("tracking unreachable (%s); buffering to %s", type(exc).__name__, self.buffer)
            self._append(op, kwargs)

    def flush(self) -> int | None:
        """Replay the buffered calls in order (the first one opens the run); return how many, or None when
        another process is replaying them now. A transient error leaves the rest for the next replay."""
        if not has_buffer(self.task):
            return 0
        held = fsio.HeldLock.try_acquire(self._lock("replay"))
        if held is None:
            return None
        sent = 0
        try:
            while True:
                if not self._replaying.exists():  # else a replay that died part-way: its calls first
                    with fsio.file_lock(self._lock("append")):
                        if not self.buffer.exists():
                            break
                        self.buffer.rename(self._replaying)
                sent += self._replay(read_buffer(self._replaying))
                self._replaying.rename(self.buffer.with_suffix(f".synced-{time.time_ns()}"))
        finally:
            held.release()
        self._offline_since = None
        return sent

    def _replay(self, entries: list[dict[str, Any]]) -> int:
        for entry in entries:
            op = entry.pop("op")
            if op != "open" and self.run_id is None:  # the run was opened before these calls were buffered
                self._attach(**self._open_args)
            try:
                getattr(self, f"_op_{op}")(**entry)
            except TypeError as exc:  # arguments the call does not take: the file was edited or damaged
                raise fsio.DamagedFileError(self._replaying, f"call {op!r}: {exc}") from None
        return len(entries)

    # -- the interface the trainer uses -------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        """Log params once: a resumed run already has them (and MLflow refuses changed values)."""
        self._call("params", params={k: str(v) for k, v in params.items()})

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Log one epoch's metrics at ``step=epoch`` unless that epoch was logged before a restart."""
        self._call("epoch", epoch=epoch, metrics={k: float(v) for k, v in metrics.items()},
                   ts=int(time.time() * 1000))

    def log_final(self, metrics: dict[str, float], step: int) -> None:
        self._call("final", metrics={k: float(v) for k, v in metrics.items()}, step=step, ts=int(time.time() * 1000))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._call("tags", tags={k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._call("artifact", path=str(path), artifact_path=artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("text", text=text, artifact_file=artifact_file)

    def end(self, status: str) -> None:
        """Close the run; the task's buffered calls are tried once more first, whenever the last try was."""
        self._offline_since = None
        self._call("end", status=status)


def sync_task(uri: str, experiment_id: str, parent_run_id: str, task: TaskDir) -> int | None:
    """Replay a task's buffered tracking calls (``hpcvit sync``); return how many were sent, or None while the
    task itself is replaying them."""
    return TaskTracker(uri, experiment_id, parent_run_id, task, tags={}, connect=False).flush()


def replaying(buffer: Path) -> Path:
    """Where a replay moves ``buffer`` while it sends its calls."""
    return buffer.with_name(buffer.name + ".replaying")


def has_buffer(task: TaskDir) -> bool:
    """Whether ``task`` holds tracking calls not yet sent."""
    return task.tracking_buffer.exists() or replaying(task.tracking_buffer).exists()


BUFFERED_OPS = frozenset({"open", "params", "epoch", "final", "tags", "artifact", "text", "end"})
"""The calls a task buffers while the tracking server is unreachable (``_op_<name>`` of :class:`TaskTracker`)."""


def read_buffer(path: Path) -> list[dict[str, Any]]:
    """The buffered calls of ``path``, in order; a torn last line (a process killed mid-append) is skipped with
    a warning, any other line that is not a call raises :class:`~hpcvit.fsio.DamagedFileError` naming it."""
    return fsio.read_records(path, lambda entry: entry.get("op") in BUFFERED_OPS, "a buffered tracking call")
