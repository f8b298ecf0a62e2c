"""The sweep folder and its ledger: what was asked for, what was submitted, what each task did.

Layout of ``<output_dir>/<sweep_id>/``::

    manifest.json        sweep id, spec file, executor, tracking ids, number of tasks, run labels
    spec.yaml            the spec file as submitted
    runs.jsonl           one resolved run spec per line, line i = task i (the one stored copy)
    submissions.jsonl    one line per submission (job id of each task index it covers)
    submitit/            submitit's folder (pickles, scheduler logs)
    tasks/<iiiii>/       one folder per task, its files named by :class:`TaskDir`

Every file is written atomically (:mod:`hpcvit.fsio`) or appended one line at a time under a lock, so the
ledger stays readable from a new shell at any time, whatever happened to the processes that wrote it. A file
that cannot be read back raises :class:`hpcvit.fsio.DamagedFileError`, whose message names it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcvit import fsio
from hpcvit.fsio import DamagedFileError
from hpcvit.config import JobSpec

log = logging.getLogger(__name__)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_sweep_id(name: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


class TaskDir:
    """One task's folder. Its identity, ``<sweep id>/<index>``, never changes across requeues and resumes.

    Who writes what: the launcher ``state.json``; rank 0 of the trainer ``progress.json``, the outcome markers
    ``result.json`` (finished), ``stopped.json`` (stopped by a signal at a checkpoint) and ``failed.json``
    (raised), the MLflow run id and the tracking buffer; ``hpcvit cancel`` the ``cancel`` request.
    """

    STATE, PROGRESS = "state.json", "progress.json"
    RESULT, STOPPED, FAILED = "result.json", "stopped.json", "failed.json"
    BUDGET, RUNG_DONE = "budget.json", "rung_done.json"
    CANCEL = "cancel"
    RUN_ID, TRACKING_BUFFER = "mlflow_run_id", "tracking_buffer.jsonl"
    LOG, CHECKPOINTS = "train.log", "checkpoints"
    PREDICTIONS, BEST_WEIGHTS = "predictions.npz", "best_model.pt"
    RUN_LOCK = ".trainer.lock"
    RESERVE = ".reserve"
    RESERVE_BYTES = 256 << 10
    """Space kept in the task folder so that, on a full disk, the task can still record how it ended."""

    def __init__(self, sweep: SweepDir, index: int):
        self.sweep, self.index = sweep, index
        self.path = sweep.root / "tasks" / f"{index:05d}"

    def __repr__(self) -> str:
        return f"TaskDir({self.key})"

    @property
    def key(self) -> str:
        return f"{self.sweep.sweep_id}/{self.index:05d}"

    @property
    def label(self) -> str:
        labels = self.sweep.manifest.get("labels", [])
        return labels[self.index] if self.index < len(labels) else ""

    @property
    def run_name(self) -> str:
        """The MLflow run name: index and label, e.g. ``0003-coatnet_0_lr=0.0003``."""
        return self.name_for(self.index, self.label)

    @staticmethod
    def name_for(index: int, label: str) -> str:
        return f"{index:04d}-{label}".replace(" ", "_")

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def log(self) -> Path:
        return self.path / self.LOG

    def spec(self) -> JobSpec:
        return self.sweep.run_spec(self.index)

    def ensure(self) -> TaskDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def keep_reserve(self) -> None:
        """(Re)create the reserve file: the launcher does at every start, while there is space."""
        path = self.ensure().path / self.RESERVE
        try:
            if not path.exists() or path.stat().st_size < self.RESERVE_BYTES:
                with open(path, "wb") as f:
                    f.write(b"\0" * self.RESERVE_BYTES)
        except OSError:
            path.unlink(missing_ok=True)

    def _record(self, write: Callable[[], None]) -> None:
        """Write a record; on a full disk, give up the reserve and try once more."""
        try:
            write()
        except OSError as exc:
            if exc.errno != errno.ENOSPC or not (self.path / self.RESERVE).exists():
                raise
            (self.path / self.RESERVE).unlink()
            log.warning("%s: disk full, the reserve file was released to record the task's state", self.path)
            write()

    # -- state.json: the launcher's record ---------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return fsio.read_object(self.path / self.STATE, {})

    def write_state(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into state.json (only the task's launcher and ``resume`` write it)."""
        self.ensure()
        state = {**self.state(), **fields, "updated": now_iso()}
        self._record(lambda: fsio.write_json(self.path / self.STATE, state))
        return state

    # -- the trainer's reports ----------------------------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        """What the trainer last reported (epoch, step, metrics); written by rank 0 only."""
        return fsio.read_object(self.path / self.PROGRESS, {})

    def write_progress(self, progress: dict[str, Any]) -> None:
        fsio.write_json(self.path / self.PROGRESS, {**progress, "updated": now_iso()})

    def result(self) -> dict[str, Any] | None:
        """``result.json`` of a finished training, or None."""
        return fsio.read_object(self.path / self.RESULT, None) or None

    def write_result(self, result: dict[str, Any]) -> None:
        fsio.write_json(self.path / self.RESULT, {**result, "finished": now_iso()})

    def stopped(self) -> dict[str, Any] | None:
        """``stopped.json``: where the trainer stopped for a signal, or None."""
        return fsio.read_object(self.path / self.STOPPED, None) or None

    def write_stopped(self, stopped: dict[str, Any]) -> None:
        fsio.write_json(self.path / self.STOPPED, {**stopped, "time": now_iso()})

    def failure(self) -> dict[str, Any] | None:
        """``failed.json``: the trainer's error, or None."""
        return fsio.read_object(self.path / self.FAILED, None) or None

    def write_failure(self, error: str, summary: str | None = None) -> None:
        """``error``: the traceback; ``summary``: one line for ``status`` (default: the traceback's last)."""
        lines = error.strip().splitlines() or [""]
        record = {"error": error, "summary": summary or lines[-1], "time": now_iso()}
        self._record(lambda: fsio.write_json(self.path / self.FAILED, record))

    # -- adaptive search: the epoch budget of the task's rung, and its end ---------------------------------
    def budget(self) -> dict[str, Any] | None:
        """``budget.json``: ``{"rung": k, "epochs": E}`` of a search's rung: train to epoch E, then stop; None
        outside a search."""
        return fsio.read_object(self.path / self.BUDGET, None) or None

    def write_budget(self, rung: int, epochs: int) -> None:
        self.ensure()
        fsio.write_json(self.path / self.BUDGET, {"rung": rung, "epochs": epochs})

    def rung_done(self) -> dict[str, Any] | None:
        """``rung_done.json``: the trainer reached its rung's budget (rung, epoch, metric value), or None."""
        return fsio.read_object(self.path / self.RUNG_DONE, None) or None

    def write_rung_done(self, record: dict[str, Any]) -> None:
        fsio.write_json(self.path / self.RUNG_DONE, {**record, "time": now_iso()})

    def clear_outcome(self) -> None:
        """Remove the markers of the previous start (a new start writes its own)."""
        for name in (self.STOPPED, self.FAILED, self.RUNG_DONE):
            (self.path / name).unlink(missing_ok=True)

    # -- cancel requests ----------------------------------------------------------------------------------
    def request_cancel(self, reason: str = "cancelled by user") -> None:
        self.ensure()
        fsio.write_text(self.path / self.CANCEL, reason + "\n")

    def cancel_requested(self) -> bool:
        return (self.path / self.CANCEL).exists()

    def clear_cancel(self) -> None:
        (self.path / self.CANCEL).unlink(missing_ok=True)

    # -- the one live trainer ------------------------------------------------------------------------------
    def acquire_trainer_lock(self, wait_s: float) -> fsio.HeldLock:
        """The task's trainer lock, held by rank 0 for as long as it trains: a second copy of the task (a resume
        while the old ranks still save, a duplicate submission) waits for the first to exit, at most ``wait_s``
        seconds, then refuses to start."""
        self.ensure()
        path = self.path / self.RUN_LOCK
        deadline = time.monotonic() + wait_s
        waited = False
        while (lock := fsio.HeldLock.try_acquire(path)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"task {self.key} is still being trained by another process ({path} is held: "
                                   f"{path.read_text().strip() or 'unknown holder'}); not starting a second copy")
            if not waited:
                log.warning("task %s: waiting for its previous trainer to exit (%s is held)", self.key, path)
                waited = True
            time.sleep(0.5)
        os.ftruncate(lock.fd, 0)
        os.write(lock.fd, f"pid {os.getpid()} on {socket.gethostname()} since {now_iso()}\n".encode())
        return lock

    def trainer_running(self) -> bool:
        """Whether some trainer of this task holds its lock now."""
        return fsio.is_locked(self.path / self.RUN_LOCK)

    # -- tracking -----------------------------------------------------------------------------------------
    def run_id(self) -> str | None:
        """The MLflow run id of this task: the one its first start opened, else the one made at submit."""
        try:
            text = (self.path / self.RUN_ID).read_bytes().decode("ascii", errors="replace").strip()
        except FileNotFoundError:
            return self.sweep.task_runs().get(self.index)
        return _checked_run_id(text, self.path / self.RUN_ID) or None

    def run_opened(self) -> bool:
        """Whether a start of this task has opened its MLflow run (and logged its parameters) before."""
        return (self.path / self.RUN_ID).exists()

    def write_run_id(self, run_id: str) -> None:
        fsio.write_text(self.path / self.RUN_ID, run_id)

    @property
    def tracking_buffer(self) -> Path:
        return self.path / self.TRACKING_BUFFER


class SweepDir:
    """A sweep's folder and ledger."""

    MANIFEST, SPEC, RUNS, SUBMISSIONS = "manifest.json", "spec.yaml", "runs.jsonl", "submissions.jsonl"
    SEARCH = "search.json"
    """An adaptive search's plan, rungs and decisions (:mod:`hpcvit.search`); absent for a plain sweep."""
    TASK_RUNS = "task_runs.json"
    """Task index -> the MLflow run made for it at submit (tasks never create runs)."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self._task_runs: dict[int, str] | None = None

    def __repr__(self) -> str:
        return f"SweepDir({self.root})"

    @property
    def manifest(self) -> dict[str, Any]:
        try:
            data = fsio.read_json(self.root / self.MANIFEST)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.root}: not a sweep directory (no manifest.json)") from None
        if not isinstance(data, dict):
            raise DamagedFileError(self.root / self.MANIFEST, "not a JSON object")
        return data

    @property
    def sweep_id(self) -> str:
        return self.root.name

    @property
    def submitit_dir(self) -> Path:
        return self.root / "submitit"

    @property
    def n_tasks(self) -> int:
        m = self.manifest
        n, labels = m.get("n_tasks"), m.get("labels")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise DamagedFileError(self.root / self.MANIFEST, f"n_tasks is {n!r}, not a number of tasks")
        if isinstance(labels, list) and len(labels) != n:
            raise DamagedFileError(self.root / self.MANIFEST, f"n_tasks is {n} but {len(labels)} runs are labelled "
                                   "(the sweep folder was edited by hand?)")
        return n

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.get("labels", []))

    def task(self, index: int) -> TaskDir:
        return TaskDir(self, index)

    def tasks(self) -> list[TaskDir]:
        return [TaskDir(self, i) for i in range(self.n_tasks)]

    def _run_lines(self) -> list[str]:
        try:
            return fsio.read_text_lines(self.root / self.RUNS)
        except FileNotFoundError:
            raise DamagedFileError(self.root / self.RUNS, "missing (the sweep folder is incomplete)") from None

    def _parse_run(self, line: str, index: int) -> JobSpec:
        try:
            return JobSpec.model_validate_json(line, strict=False)
        except ValueError as exc:
            first = str(exc).splitlines()[0]
            raise DamagedFileError(self.root / self.RUNS, f"line {index + 1}: not a valid run spec ({first})") from None

    def run_spec(self, index: int) -> JobSpec:
        lines = self._run_lines()
        if not 0 <= index < len(lines):
            raise IndexError(f"sweep {self.sweep_id} has no task {index} (it has {len(lines)})")
        return self._parse_run(lines[index], index)

    def run_specs(self) -> list[JobSpec]:
        return [self._parse_run(line, i) for i, line in enumerate(self._run_lines())]

    def search(self) -> dict[str, Any] | None:
        """``search.json`` of an adaptive search, or None."""
        return fsio.read_object(self.root / self.SEARCH, None)

    def write_search(self, record: dict[str, Any]) -> None:
        fsio.write_json(self.root / self.SEARCH, record)

    def lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        return fsio.file_lock(self.root / f".{name}.lock")

    def append_runs(self, specs: list[JobSpec], labels: list[str]) -> list[int]:
        """Add tasks to the sweep (``submit --into``): their specs after the others, then the manifest's count
        and labels; returns their indices."""
        with self.lock("manifest"):
            m = self.manifest
            first = int(m["n_tasks"])
            lines = self._run_lines()[:first]
            fsio.write_text(self.root / self.RUNS, "".join(line + "\n" for line in lines)
                            + "".join(spec.model_dump_json() + "\n" for spec in specs))
            fsio.write_json(self.root / self.MANIFEST, {**m, "n_tasks": first + len(specs),
                                                        "labels": [*m.get("labels", []), *labels]})
        return list(range(first, first + len(specs)))

    def task_runs(self) -> dict[int, str]:
        """Task index -> MLflow run id of the runs made at submit (read once per :class:`SweepDir` object)."""
        if self._task_runs is None:
            path = self.root / self.TASK_RUNS
            doc = fsio.read_json(path, default={})
            if not isinstance(doc, dict):
                raise DamagedFileError(path, "not a JSON object of task index -> run id")
            if not all(isinstance(i, str) and i.isdigit() for i in doc):
                raise DamagedFileError(path, "a key is not a task index")
            self._task_runs = {int(i): _checked_run_id(str(r), path) for i, r in doc.items()}
        return self._task_runs

    def add_task_runs(self, runs: dict[int, str]) -> None:
        """Record the MLflow runs made for tasks (at submit, or for the tasks ``submit --into`` adds)."""
        with self.lock("task_runs"):
            self._task_runs = None
            merged = {**self.task_runs(), **runs}
            fsio.write_json(self.root / self.TASK_RUNS, {str(i): merged[i] for i in sorted(merged)})
            self._task_runs = merged

    def update_manifest(self, **fields: Any) -> None:
        with self.lock("manifest"):
            fsio.write_json(self.root / self.MANIFEST, {**self.manifest, **fields})

    # -- submissions --------------------------------------------------------------------------------------
    def record_submission(self, job_ids: dict[int, str], executor: str) -> dict[str, Any]:
        """Append one submission: task index -> scheduler job id."""
        record = {"time": now_iso(), "executor": executor, "host": socket.gethostname(),
                  "jobs": {str(i): j for i, j in job_ids.items()}}
        with self.lock("submissions"):
            fsio.append_line(self.root / self.SUBMISSIONS, json.dumps(record))
        return record

    def submissions(self) -> list[dict[str, Any]]:
        """Every submission record; a torn last line (a writer killed mid-append) is skipped with a warning."""
        path = self.root / self.SUBMISSIONS
        try:
            return fsio.read_records(path, lambda record: isinstance(record.get("jobs"), dict), "a submission record")
        except FileNotFoundError:
            return []

    def latest_jobs(self) -> dict[int, tuple[str, str]]:
        """Task index -> (job id, executor) of its most recent submission."""
        latest: dict[int, tuple[str, str]] = {}
        for record in self.submissions():
            for i, job in record["jobs"].items():
                latest[int(i)] = (job, record["executor"])
        return latest


def _checked_run_id(text: str, path: Path) -> str:
    if text and not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", text):
        raise DamagedFileError(path, f"not an MLflow run id ({text[:40]!r})")
    return text


def create_sweep_dir(output_dir: Path, sweep_id: str, spec_file: Path, specs: list[JobSpec],
                     executor: str, labels: list[str]) -> SweepDir:
    """Write a new sweep folder: spec copy, resolved runs, manifest (last, so its presence means complete)."""
    root = (Path(output_dir) / sweep_id).resolve()
    root.mkdir(parents=True, exist_ok=False)
    fsio.write_text(root / SweepDir.SPEC, Path(spec_file).read_text(), durable=False)
    fsio.write_text(root / SweepDir.RUNS, "".join(spec.model_dump_json() + "\n" for spec in specs))
    fsio.write_json(root / SweepDir.MANIFEST, {
        "sweep_id": sweep_id, "created": now_iso(), "spec_file": str(Path(spec_file).resolve()),
        "executor": executor, "n_tasks": len(specs), "labels": labels, "name": specs[0].name,
    })
    return SweepDir(root)


def find_sweep(ref: str | None, output_dir: Path) -> SweepDir:
    """A sweep by path, by id under ``output_dir``, or the newest one there when ``ref`` is None."""
    output_dir = Path(output_dir)
    if ref:
        candidates = list(dict.fromkeys((Path(ref), output_dir / ref)))
        for candidate in candidates:
            if (candidate / SweepDir.MANIFEST).exists():
                return SweepDir(candidate)
        looked = " and ".join(str(c / SweepDir.MANIFEST) for c in candidates)
        raise FileNotFoundError(f"no sweep {ref!r} (looked for {looked})")
    sweeps = sorted(output_dir.glob(f"*/{SweepDir.MANIFEST}"), key=lambda p: p.stat().st_mtime)
    if not sweeps:
        raise FileNotFoundError(f"no sweeps under {output_dir}/ (submit one with `hpcvit submit SPEC`)")
    return SweepDir(sweeps[-1].parent)
