"""The sweep's parent run and the sweep-level reads and repairs of its children."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcvit.tracking import names
from hpcvit.tracking.client import mlflow_client


def setup_sweep(uri: str, experiment: str, sweep_id: str, artifact_root: Path, spec_file: Path,
                n_tasks: int, description: str = "") -> tuple[str, str]:
    """Create (or reuse) the experiment and the sweep's parent run; return (experiment_id, parent_run_id).

    Done once by the submitter before any task starts, which also creates a fresh SQLite schema
    single-handedly (concurrent first use of a new database races in its migrations).
    """
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = (Path(artifact_root) / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    else:
        experiment_id = exp.experiment_id
    # MLflow 3 shows an experiment of unknown kind as GenAI (traces, token usage): these are model-training runs
    client.set_experiment_tag(experiment_id, names.EXPERIMENT_KIND_TAG, "custom_model_development")
    parent = client.create_run(experiment_id, run_name=sweep_id, tags={
        names.SWEEP_ID_TAG: sweep_id, names.ROLE_TAG: "sweep", names.N_TASKS_TAG: str(n_tasks),
        names.NOTE_TAG: description,
    })
    client.log_artifact(parent.info.run_id, str(spec_file))
    return experiment_id, parent.info.run_id


def terminate_run(uri: str, run_id: str, status: str = "KILLED", state: str | None = None) -> bool:
    """Close a run left RUNNING by a process that died, or SCHEDULED by a task that never started; True if it
    was changed."""
    client = mlflow_client(uri)
    run = client.get_run(run_id)
    if state and run.data.tags.get(names.STATE_TAG) != str(state):
        client.set_tag(run_id, names.STATE_TAG, str(state))
    if run.info.status not in ("RUNNING", "SCHEDULED"):
        return False
    client.set_terminated(run_id, status)
    return True


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list[Any]:
    """Every task run of the sweep (read in pages of 1,000: a server caps one answer)."""
    client = mlflow_client(uri)
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], f"tags.`{names.PARENT_TAG}` = '{parent_run_id}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
