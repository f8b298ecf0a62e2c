"""The names hpcvit gives things in MLflow: tags, parameter names, the default store. Imports no MLflow."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

PARENT_TAG = "mlflow.parentRunId"
"""MLflow's own tag that nests a task's run under its sweep's parent run."""
NOTE_TAG = "mlflow.note.content"
"""MLflow's run description (the spec's ``description``)."""
TASK_KEY_TAG = "hpcvit.task_key"
"""``<sweep id>/<index>``: finds a task's run again after a requeue that lost its run-id file."""
SWEEP_ID_TAG = "hpcvit.sweep_id"
ROLE_TAG = "hpcvit.role"
"""``sweep`` on the parent run."""
N_TASKS_TAG = "hpcvit.n_tasks"
TASK_INDEX_TAG = "hpcvit.task_index"
MODEL_TAG = "hpcvit.model"
DATASET_TAG = "hpcvit.dataset"
SLURM_JOB_TAG = "hpcvit.slurm_job_id"
RESTARTS_TAG = "hpcvit.restarts"
"""Previous starts of the task: the same count as ``state.json``'s ``restarts`` and ``hpcvit status``."""
HOST_TAG = "hpcvit.host"
STATE_TAG = "hpcvit.state"
"""The task's state (:class:`hpcvit.states.TaskState`) as the run last saw it."""
RUNG_TAG = "hpcvit.search.rung"
"""An adaptive search's rung the task's run last trained in."""
OUTCOME_TAG = "hpcvit.search.outcome"
"""An adaptive search's verdict on the task: ``promoted``, ``stopped_early``, ``completed`` or ``lost``."""
BEST_EPOCH_TAG = "hpcvit.best_epoch"
BEST_CHECKPOINT_TAG = "hpcvit.best_checkpoint"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""MLflow 3's experiment kind: ``custom_model_development`` opens the runs table, not the GenAI overview."""
SUMMARY_TAG = "hpcvit.summary"
"""``logged`` on a parent run once its summary table and ROC overlay are attached."""

PARAM_VALUE_LIMIT = 6000
"""MLflow's limit on the length of a parameter value."""


def resolve_uri(spec_uri: str | None, output_dir: Path) -> str:
    """Spec's URI, else ``$MLFLOW_TRACKING_URI``, else an absolute SQLite file in the output directory."""
    uri = spec_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(Path(output_dir) / 'mlflow.db').resolve()}"


_NAME_SAFE = re.compile(r"[A-Za-z0-9_\- /]")
_ESCAPE = re.compile(r":([0-9a-f]{2})")


def name_part(key: str) -> str:
    """One segment of an MLflow parameter or metric name: characters MLflow refuses, and ``.`` (the segment
    separator) and ``:`` (the escape), become ``:xx`` (their UTF-8 bytes in hex), so that any user string
    (``abs(ieta)``, a channel name) is a valid name that :func:`name_parts` turns back into the original.
    """
    return "".join(c if _NAME_SAFE.fullmatch(c) else "".join(f":{b:02x}" for b in c.encode()) for c in str(key))


def name_parts(name: str) -> list[str]:
    """The original segments of a name made by :func:`flatten` / :func:`name_part`."""
    return [bytes(_unescape(part), "latin-1").decode() for part in name.split(".")]


def _unescape(part: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), part)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b.c": "value"}`` parameters, every key segment made a valid MLflow name
    (:func:`name_part`), values cut to MLflow's length limit."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{name_part(key)}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:PARAM_VALUE_LIMIT]
    return out
