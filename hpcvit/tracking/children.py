"""A sweep's task runs: made once, at submit, in one process, so that no task ever creates a run.

Hundreds of tasks starting at once would otherwise each create their run, and a ``create_run`` that a
loaded server answered too late is retried by the client and makes a second run. Made here, a duplicate
left by such a retry is found (two runs with one task key) and deleted before any task starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from hpcvit.ledger import SweepDir, TaskDir
from hpcvit.states import TaskState
from hpcvit.tracking import names
from hpcvit.tracking.client import mlflow_client
from hpcvit.tracking.sweep_run import child_runs

T, R = TypeVar("T"), TypeVar("R")
SERVER_THREADS = 8
"""Runs made at once against a tracking server (a file store takes one writer at a time)."""


def create_task_runs(uri: str, experiment_id: str, parent_run_id: str, tasks: Mapping[str, dict[str, str]]
                     ) -> dict[str, str]:
    """One child run per task key of ``tasks`` (key -> its run name and tags), SCHEDULED and tagged
    ``SUBMITTED``; returns task key -> run id. Keys that already have a run (a retried submit) keep it."""
    client = mlflow_client(uri)
    have = _runs_by_key(child_runs(uri, experiment_id, parent_run_id))
    todo = [key for key in tasks if key not in have]

    def make(key: str) -> tuple[str, str]:
        tags = dict(tasks[key])
        run_name = tags.pop("run_name", key)
        run = client.create_run(experiment_id, run_name=run_name, tags={
            names.PARENT_TAG: parent_run_id, names.TASK_KEY_TAG: key, names.STATE_TAG: str(TaskState.SUBMITTED),
            **tags})
        client.update_run(run.info.run_id, status="SCHEDULED")
        return key, run.info.run_id

    made = dict(each_call(uri, make, todo))
    if uri.startswith(("http://", "https://")) and made:  # a retried create_run may have made a second run
        made = _drop_duplicates(client, child_runs(uri, experiment_id, parent_run_id), made)
    return {key: (have.get(key) or made[key]) for key in tasks}


def each_call(uri: str, call: Callable[[T], R], items: list[T]) -> list[R]:
    """``call`` on every item: from :data:`SERVER_THREADS` threads against a server, one at a time against a
    file store (it takes one writer at a time)."""
    if uri.startswith(("http://", "https://")) and len(items) > 1:
        with ThreadPoolExecutor(SERVER_THREADS) as pool:
            return list(pool.map(call, items))
    return [call(item) for item in items]


def _runs_by_key(runs: list[Any]) -> dict[str, str]:
    """Task key -> its run (the earliest made, where a key has several)."""
    out: dict[str, str] = {}
    for run in sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id)):
        key = run.data.tags.get(names.TASK_KEY_TAG)
        if key:
            out.setdefault(key, run.info.run_id)
    return out


def _drop_duplicates(client: Any, runs: list[Any], made: dict[str, str]) -> dict[str, str]:
    """Delete every run of a task key but the one kept (the one recorded, else the earliest)."""
    kept = {**_runs_by_key(runs), **made}
    for run in runs:
        key = run.data.tags.get(names.TASK_KEY_TAG)
        if key in made and kept[key] != run.info.run_id:
            client.delete_run(run.info.run_id)
    return {key: kept[key] for key in made}


def register_tasks(sweep_dir: SweepDir, indices: list[int]) -> dict[int, str]:
    """Make the MLflow runs of tasks ``indices`` of the sweep (on its manifest's store, under its parent run)
    and record them in its ledger; returns index -> run id."""
    m = sweep_dir.manifest
    labels, specs = sweep_dir.labels, sweep_dir.run_specs()
    keys = {i: sweep_dir.task(i).key for i in indices}
    tasks = {keys[i]: {"run_name": TaskDir.name_for(i, labels[i] if i < len(labels) else ""),
                       names.SWEEP_ID_TAG: sweep_dir.sweep_id, names.TASK_INDEX_TAG: str(i),
                       names.MODEL_TAG: specs[i].model.name, names.DATASET_TAG: specs[i].data.format}
             for i in indices}
    ids = create_task_runs(m["tracking_uri"], m["experiment_id"], m["parent_run_id"], tasks)
    runs = {i: ids[keys[i]] for i in indices}
    sweep_dir.add_task_runs(runs)
    return runs
