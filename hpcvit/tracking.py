"""MLflow tracking: one parent run per sweep, one child run per task that every requeue continues."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

# Before mlflow is imported: no phoning home, no git lookups, no URL lines on stdout (a closed pipe
# there would leave the run RUNNING).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# An unreachable server should cost seconds, not the client's default minutes of retries: calls are buffered.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

PARENT_TAG = "mlflow.parentRunId"
TASK_KEY_TAG = "hpcvit.task_key"


def resolve_uri(spec_uri: str | None, output_dir: Path) -> str:
    """Spec's URI, else ``$MLFLOW_TRACKING_URI``, else an absolute SQLite file in the output directory."""
    uri = spec_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:6000]
    return out


def setup_sweep(uri: str, experiment: str, sweep_id: str, artifact_root: Path, spec_file: Path,
                n_tasks: int, description: str = "") -> tuple[str, str]:
    """Create (or reuse) the experiment and the sweep's parent run; return (experiment_id, parent_run_id).

    Done once by the submitter before any task starts, which also creates a fresh SQLite schema
    single-handedly (concurrent first use of a new database races in its migrations).
    """
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = (artifact_root / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    else:
        experiment_id = exp.experiment_id
    parent = client.create_run(experiment_id, run_name=sweep_id, tags={
        "hpcvit.sweep_id": sweep_id, "hpcvit.role": "sweep", "hpcvit.n_tasks": str(n_tasks),
        "mlflow.note.content": description,
    })
    client.log_artifact(parent.info.run_id, str(spec_file))
    return experiment_id, parent.info.run_id


def _transient(exc: BaseException) -> bool:
    """Errors that mean "tracking is unreachable right now", as opposed to a bug or a refused value."""
    import sqlite3

    import requests
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, (OSError, requests.RequestException, OperationalError, sqlite3.OperationalError)):
        return True
    if isinstance(exc, MlflowException):
        text = str(exc)
        return any(k in text for k in ("API request", "Max retries", "Connection", "database is locked", "timed out"))
    return False


class TaskTracker:
    """The child run of one task, opened by rank 0 of every (re)start of the task.

    When the tracking server is unreachable, training goes on: every call is appended to
    ``tracking_buffer.jsonl`` in the task folder (and retried at most once a minute); ``hpcvit sync``
    or the next successful call replays the buffer in order. Replays are idempotent: epochs already
    logged are skipped, params are logged once.
    """

    RETRY_S = 60.0

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, task_dir: Path, task_key: str,
                 run_name: str, tags: dict[str, str], connect: bool = True):
        self.client = MlflowClient(uri)
        self.task_dir = task_dir
        self.buffer = task_dir / "tracking_buffer.jsonl"
        self._open_args = {"experiment_id": experiment_id, "parent_run_id": parent_run_id, "task_key": task_key,
                           "run_name": run_name, "tags": tags}
        self.run_id: str | None = None
        self.resumed = (task_dir / "mlflow_run_id").exists()
        self.last_epoch_logged = -1
        self._offline_since: float | None = None
        if connect:
            self._call("open", **self._open_args)

    # -- the operations, as replayed from the buffer ----------------------------------------------
    def _op_open(self, experiment_id: str, parent_run_id: str, task_key: str, run_name: str,
                 tags: dict[str, str]) -> None:
        id_file = self.task_dir / "mlflow_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else None
        if run_id is None:
            found = self.client.search_runs([experiment_id], f"tags.`{TASK_KEY_TAG}` = '{task_key}'", max_results=1)
            run_id = found[0].info.run_id if found else None
        self.resumed = run_id is not None
        if run_id is None:
            run = self.client.create_run(experiment_id, run_name=run_name,
                                         tags={PARENT_TAG: parent_run_id, TASK_KEY_TAG: task_key, **tags})
            run_id = run.info.run_id
            tmp = id_file.with_suffix(".tmp")
            tmp.write_text(run_id)
            os.replace(tmp, id_file)
        else:
            self.client.update_run(run_id, status="RUNNING")
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)
        self.run_id = run_id
        history = self.client.get_metric_history(run_id, "val_loss")
        self.last_epoch_logged = max((m.step for m in history), default=-1)

    def _op_params(self, params: dict[str, str]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    def _op_epoch(self, epoch: int, metrics: dict[str, float], ts: int) -> None:
        if epoch <= self.last_epoch_logged:
            return
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, epoch) for k, v in metrics.items()])
        self.last_epoch_logged = epoch

    def _op_final(self, metrics: dict[str, float], step: int, ts: int) -> None:
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])

    def _op_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def _op_artifact(self, path: str, artifact_path: str | None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def _op_end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)

    # -- buffering ----------------------------------------------------------------------------------
    def _append(self, op: str, kwargs: dict[str, Any]) -> None:
        with open(self.buffer, "a") as f:
            f.write(json.dumps({"op": op, **kwargs}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _call(self, op: str, **kwargs: Any) -> None:
        if self._offline_since is not None and time.monotonic() - self._offline_since < self.RETRY_S:
            self._append(op, kwargs)
            return
        try:
            self.flush()
            getattr(self, f"_op_{op}")(**kwargs)
        except Exception as exc:
            if not _transient(exc):
                raise
            self._offline_since = time.monotonic()
            print(f"tracking unreachable ({type(exc).__name__}); buffering to {self.buffer}", flush=True)
            self._append(op, kwargs)

    def flush(self) -> int:
        """Replay the buffered calls in order (the first one opens the run); return how many."""
        if not self.buffer.exists():
            return 0
        lines = [json.loads(line) for line in self.buffer.read_text().splitlines() if line.strip()]
        for entry in lines:
            op = entry.pop("op")
            if op != "open" and self.run_id is None:
                self._op_open(**self._open_args)
            getattr(self, f"_op_{op}")(**entry)
        self.buffer.rename(self.buffer.with_suffix(f".synced-{int(time.time())}"))
        self._offline_since = None
        return len(lines)

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

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("tags", tags={k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._call("artifact", path=str(path), artifact_path=artifact_path)

    def end(self, status: str) -> None:
        self._call("end", status=status)


def sync_task(uri: str, experiment_id: str, parent_run_id: str, task_dir: Path, task_key: str,
              run_name: str) -> int:
    """Replay a task's buffered tracking calls (``hpcvit sync``); return how many were sent."""
    tracker = TaskTracker(uri, experiment_id, parent_run_id, task_dir, task_key, run_name, tags={}, connect=False)
    return tracker.flush()


def terminate_run(uri: str, run_id: str, status: str = "KILLED", state: str | None = None) -> bool:
    """Close a run left RUNNING by a process that died; True if it was changed."""
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    if run.info.status != "RUNNING":
        return False
    if state:
        client.set_tag(run_id, "hpcvit.state", state)
    client.set_terminated(run_id, status)
    return True


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list[Any]:
    client = MlflowClient(uri)
    return client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=5000)


__all__ = ["TaskTracker", "child_runs", "sync_task", "flatten", "resolve_uri", "setup_sweep", "terminate_run"]
