"""The sweep directory and its ledger: what was asked for, what was submitted, what each task did.

Layout of ``<output_dir>/<sweep_id>/``::

    manifest.json        sweep id, spec file, executor, tracking ids, number of tasks
    spec.yaml            the spec file as submitted
    runs.jsonl           one resolved run spec per line, line i = task i
    submissions.jsonl    one line per submission (job id, the task indices it covers)
    submitit/            submitit's folder (pickles, scheduler logs)
    tasks/<iiiii>/       one folder per task: state.json, progress.json, train.log, checkpoints/, mlflow_run_id

Every file is written atomically (temp file + rename) or appended under a lock, so the ledger stays
readable from a new shell at any time, whatever happened to the processes that wrote it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpcvit.spec import JobSpec


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` so that readers see the old or the new content, never a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (fsync of the directory itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock held for the ``with`` block (released by the kernel if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def new_sweep_id(name: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (guards against pid reuse), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_alive(pid: int | None, start: int | None) -> bool:
    return pid is not None and start is not None and process_start_time(pid) == start


class TaskDir:
    """One task's folder: its identity is (sweep id, index) and never changes across requeues."""

    def __init__(self, sweep: SweepDir, index: int):
        self.sweep, self.index = sweep, index
        self.path = sweep.root / "tasks" / f"{index:05d}"

    @property
    def key(self) -> str:
        return f"{self.sweep.sweep_id}/{self.index:05d}"

    @property
    def run_name(self) -> str:
        """The MLflow run name: index and label, e.g. ``0003-coatnet_0_lr=0.0003``."""
        labels = self.sweep.manifest.get("labels", [])
        label = labels[self.index] if self.index < len(labels) else ""
        return f"{self.index:04d}-{label}".replace(" ", "_")

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    def state(self) -> dict[str, Any]:
        return read_json(self.path / "state.json", {})

    def write_state(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into state.json (only the task's launcher writes it)."""
        self.path.mkdir(parents=True, exist_ok=True)
        state = {**self.state(), **fields, "updated": now_iso()}
        write_json_atomic(self.path / "state.json", state)
        return state

    def progress(self) -> dict[str, Any]:
        """What the trainer last reported (epoch, step, metrics); written by rank 0 only."""
        return read_json(self.path / "progress.json", {})

    def spec(self) -> JobSpec:
        return self.sweep.run_spec(self.index)


class SweepDir:
    """A sweep's directory and ledger."""

    def __init__(self, root: Path):
        self.root = root.resolve()

    @property
    def manifest(self) -> dict[str, Any]:
        data = read_json(self.root / "manifest.json")
        if data is None:
            raise FileNotFoundError(f"{self.root}: not a sweep directory (no manifest.json)")
        return data

    @property
    def sweep_id(self) -> str:
        return self.root.name

    @property
    def submitit_dir(self) -> Path:
        return self.root / "submitit"

    @property
    def n_tasks(self) -> int:
        return int(self.manifest["n_tasks"])

    def task(self, index: int) -> TaskDir:
        return TaskDir(self, index)

    def tasks(self) -> list[TaskDir]:
        return [TaskDir(self, i) for i in range(self.n_tasks)]

    def run_spec(self, index: int) -> JobSpec:
        with open(self.root / "runs.jsonl") as f:
            for i, line in enumerate(f):
                if i == index:
                    return JobSpec.model_validate_json(line, strict=False)
        raise IndexError(f"sweep {self.sweep_id} has no task {index}")

    def run_specs(self) -> list[JobSpec]:
        with open(self.root / "runs.jsonl") as f:
            return [JobSpec.model_validate_json(line, strict=False) for line in f]

    def lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.root / f".{name}.lock")

    def record_submission(self, job_ids: dict[int, str], executor: str) -> dict[str, Any]:
        """Append one submission: task index -> scheduler job id."""
        record = {"time": now_iso(), "executor": executor, "host": socket.gethostname(),
                  "jobs": {str(i): j for i, j in job_ids.items()}}
        with self.lock("submissions"), open(self.root / "submissions.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return record

    def submissions(self) -> list[dict[str, Any]]:
        try:
            with open(self.root / "submissions.jsonl") as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def latest_jobs(self) -> dict[int, tuple[str, str]]:
        """Task index -> (job id, executor) of its most recent submission."""
        latest: dict[int, tuple[str, str]] = {}
        for record in self.submissions():
            for i, job in record["jobs"].items():
                latest[int(i)] = (job, record["executor"])
        return latest

    def update_manifest(self, **fields: Any) -> None:
        with self.lock("manifest"):
            write_json_atomic(self.root / "manifest.json", {**self.manifest, **fields})


def create_sweep_dir(output_dir: Path, sweep_id: str, spec_file: Path, specs: list[JobSpec],
                     executor: str, labels: list[str]) -> SweepDir:
    """Write a new sweep directory: spec copy, resolved runs, manifest (last, so its presence means complete)."""
    root = (output_dir / sweep_id).resolve()
    root.mkdir(parents=True, exist_ok=False)
    (root / "spec.yaml").write_text(spec_file.read_text())
    tmp = root / ".runs.jsonl.tmp"
    with open(tmp, "w") as f:
        for spec in specs:
            f.write(spec.model_dump_json() + "\n")
    os.replace(tmp, root / "runs.jsonl")
    write_json_atomic(root / "manifest.json", {
        "sweep_id": sweep_id, "created": now_iso(), "spec_file": str(spec_file.resolve()),
        "executor": executor, "n_tasks": len(specs), "labels": labels, "name": specs[0].name,
    })
    return SweepDir(root)


def find_sweep(ref: str | None, output_dir: Path) -> SweepDir:
    """A sweep by path, by id under ``output_dir``, or the newest one there when ``ref`` is None."""
    if ref:
        for candidate in (Path(ref), output_dir / ref):
            if (candidate / "manifest.json").exists():
                return SweepDir(candidate)
        raise FileNotFoundError(f"no sweep {ref!r} (looked for {ref}/manifest.json and {output_dir / ref}/manifest.json)")
    sweeps = sorted(output_dir.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not sweeps:
        raise FileNotFoundError(f"no sweeps under {output_dir}/ (submit one with `hpcvit submit SPEC`)")
    return SweepDir(sweeps[-1].parent)
