"""What a task tells the world: log lines, ``progress.json``, its outcome marker, and its MLflow run.

Only rank 0 reports; the other ranks' calls do nothing. The outcome markers (``result.json``, ``stopped.json``,
``failed.json``) are what the launcher reads to record the task's state; MLflow gets the same state as a tag.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit import fsio
from hpcvit.scheduler.jobenv import JobEnv
from hpcvit.ledger import TaskDir, now_iso
from hpcvit.rngs import host_generators_kept
from hpcvit.config import JobSpec
from hpcvit.states import TaskState
from hpcvit.tracking import names

log = logging.getLogger(__name__)

Artifacts = tuple[str, Callable[[Path], list[Path]]]
"""(task sub-folder and MLflow artifact path, writer of the files into that folder)."""
BEST_WEIGHTS_ARTIFACT_LIMIT = 200 * 2**20
"""Best weights larger than this stay in the task folder and are not copied into MLflow."""


class TaskReport:
    """Rank 0's reports of one task's training."""

    def __init__(self, task: TaskDir, spec: JobSpec, main: bool, env: JobEnv):
        self.task, self.spec, self.main, self.env = task, spec, main, env
        self._tracker: Any = None
        self._opening: threading.Thread | None = None
        self._open_error: BaseException | None = None
        self._epoch_clock: float | None = None
        """When the current epoch started (monotonic), for the wall time per epoch behind status's ETA."""

    @property
    def tracker(self) -> Any:
        """The task's :class:`TaskTracker` once it is open (waits for :meth:`open_tracking`'s thread)."""
        if self._opening is not None:
            self._opening.join()
            self._opening = None
            if self._open_error is not None:
                raise self._open_error
        return self._tracker

    def log(self, msg: str) -> None:
        if self.main:
            print(f"[{now_iso()}] {self.task.key} {msg}", flush=True)

    def progress(self, state: TaskState, counters: dict[str, Any], metric: str,
                 last: dict[str, float] | None = None) -> None:
        if self.main:
            report = {**counters, "epochs": self.spec.optim.epochs, "metric": metric, "state": str(state)}
            now = time.monotonic()
            if last is not None:
                report["last"] = last
                if self._epoch_clock is not None:  # a whole epoch (training and evaluation) ran in this process
                    report["epoch_wall_s"] = round(now - self._epoch_clock, 3)
            # an epoch resumed mid-way is not timed: it ran only its remaining steps here
            self._epoch_clock = now if counters.get("step_in_epoch", 0) == 0 else None
            self.task.write_progress(report)

    # -- tracking -----------------------------------------------------------------------------------
    def open_tracking(self, facts: Callable[[], dict[str, Any]]) -> None:
        """Open (or continue) the task's MLflow run with its tags, parameters and spec, in a thread, so that
        training starts meanwhile (importing MLflow and opening the run take seconds of every restart); the
        first use of :attr:`tracker` waits for it. ``facts()`` (parameter count, FLOPs, data facts) is asked for
        only by a new run, here in the calling thread (it builds a model, which draws random numbers)."""
        if not self.main:
            return
        m = self.task.sweep.manifest
        if not m.get("tracking_uri"):
            self.log("no tracking store in the sweep's manifest: this run is not logged to MLflow")
            return
        known = {} if self.task.run_opened() else None
        extra = facts() if known is None else known

        def open_run() -> None:
            try:
                with host_generators_kept():  # imports and retries draw; the trainer may restore a checkpoint meanwhile
                    self._open(m, extra)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the training thread by .tracker
                self._open_error = exc

        self._opening = threading.Thread(target=open_run, name="hpcvit-tracking-open", daemon=True)
        self._opening.start()

    def _open(self, m: dict[str, Any], facts: dict[str, Any]) -> None:
        from hpcvit.tracking.task_run import TaskTracker

        spec = self.spec
        tracker = TaskTracker(m["tracking_uri"], m["experiment_id"], m["parent_run_id"], self.task, tags={
            names.SWEEP_ID_TAG: self.task.sweep.sweep_id, names.TASK_INDEX_TAG: str(self.task.index),
            names.MODEL_TAG: spec.model.name, names.DATASET_TAG: spec.data.format,
            names.SLURM_JOB_TAG: self.env.scheduler_job, names.RESTARTS_TAG: str(self.env.restarts),
            names.HOST_TAG: socket.gethostname(), names.STATE_TAG: str(TaskState.RUNNING),
            **({names.RUNG_TAG: str(budget["rung"])} if (budget := self.task.budget()) else {})})
        if not tracker.resumed:
            params = names.flatten(spec.model_dump(mode="json"))
            from hpcvit import provenance

            params.update({**provenance.environment(), **facts})
            tracker.log_params(params)
            tracker.log_text(spec.model_dump_json(indent=1), "spec.json")
            tracker.log_text(provenance.requirements(), "requirements.txt")
        self._tracker = tracker
        self.log(f"MLflow run {tracker.run_id} ({'continued' if tracker.resumed else 'new'})")

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.tracker is not None:
            self.tracker.log_epoch(epoch, metrics)

    # -- outcomes -------------------------------------------------------------------------------------
    def finished(self, result: dict[str, Any], predictions: dict[str, np.ndarray], *, best_state: Any,
                 best_checkpoint: Path | None, artifacts: Artifacts | None = None) -> None:
        """Predictions, artifacts and ``result.json`` of a completed training; the MLflow run is closed.
        ``artifacts``: (folder name, writer) of the objective's files, written into that task sub-folder and
        logged under that artifact path."""
        if not self.main:
            return
        with fsio.atomic_open(self.task.file(TaskDir.PREDICTIONS)) as f:
            np.savez(f, **predictions)
        if self.tracker is not None:
            self._log_artifacts(result, best_state, best_checkpoint, artifacts)
        self.task.write_result({**result, "status": "completed",
                                "mlflow_run_id": self.tracker.run_id if self.tracker else None})

    def _log_artifacts(self, result: dict[str, Any], best_state: Any, best_checkpoint: Path | None,
                       artifacts: Artifacts | None) -> None:
        import torch

        t = self.tracker
        if result["final"]:
            t.log_final(result["final"], self.spec.optim.epochs)
        if artifacts is not None:
            name, write = artifacts
            for path in write(self.task.file(name)):
                t.log_artifact(path, name)
        t.log_artifact(self.task.file(TaskDir.PREDICTIONS))
        if best_checkpoint is not None:
            weights = self.task.file(TaskDir.BEST_WEIGHTS)
            with fsio.atomic_open(weights) as f:
                torch.save(best_state, f)
            if weights.stat().st_size < BEST_WEIGHTS_ARTIFACT_LIMIT:
                t.log_artifact(weights)
            t.set_tags({names.BEST_CHECKPOINT_TAG: str(best_checkpoint)})
        t.set_tags({names.STATE_TAG: str(TaskState.COMPLETED), names.BEST_EPOCH_TAG: str(result["best_epoch"]),
                    f"best_{result['metric']}": f"{result['best_metric']}"})
        t.end("FINISHED")

    def rung_done(self, rung: int, epoch: int, metrics: dict[str, float]) -> None:
        """A search's rung is trained (checkpointed): ``rung_done.json`` for its decision; the run waits for it."""
        if not self.main:
            return
        self.task.write_rung_done({"rung": rung, "epoch": epoch, "metrics": metrics})
        if self.tracker is not None:
            self.tracker.set_tags({names.STATE_TAG: str(TaskState.RUNG_DONE)})
            self.tracker.end("SCHEDULED")

    def stopped(self, signal_name: str, counters: dict[str, Any]) -> TaskState:
        """The trainer stopped at a checkpoint for a signal. Returns its state: CANCELLED where ``hpcvit cancel``
        asked for the stop (the launcher records the same), else PREEMPTED (to be requeued or resumed)."""
        state = TaskState.CANCELLED if self.task.cancel_requested() else TaskState.PREEMPTED
        if not self.main:
            return state
        self.task.write_stopped({"signal": signal_name, **counters})
        if self.tracker is not None:
            self.tracker.set_tags({names.STATE_TAG: str(state)})
            self.tracker.end("KILLED")
        return state

    def failed(self, error: str, summary: str | None = None) -> None:
        if not self.main:
            return
        self.task.write_failure(error, summary)
        if self.tracker is not None:
            try:
                self.tracker.set_tags({names.STATE_TAG: str(TaskState.FAILED)})
                self.tracker.end("FAILED")
            except Exception as exc:  # noqa: BLE001 - the failure is recorded; status closes the run later
                log.warning("could not mark the MLflow run FAILED (%s: %s)", type(exc).__name__, exc)
