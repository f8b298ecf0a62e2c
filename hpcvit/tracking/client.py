"""The one place MLflow's client is made: environment defaults set before ``mlflow`` is first imported."""

from __future__ import annotations

import logging
import os
from typing import Any

# No phoning home, no git lookups, no URL lines on stdout (a closed pipe there would leave the run RUNNING);
# an unreachable server costs seconds, not the client's default minutes of retries (calls are buffered).
_DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true", "GIT_PYTHON_REFRESH": "quiet", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60", "MLFLOW_LOGGING_LEVEL": "WARNING",
}


def mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` on ``uri``."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    # mlflow sets its own logger to INFO when imported: its migration and URL lines are not hpcvit's output
    logging.getLogger("mlflow").setLevel(max(logging.getLogger("mlflow").level, logging.WARNING))
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(uri)
