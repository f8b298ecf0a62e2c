"""Is a tracking error an outage (retry later, buffer meanwhile) or a refusal (a bug, a bad value)?

Decided from the exception's type, its chain (MLflow wraps a refused connection in an ``MlflowException``
whose ``__context__`` is the ``requests`` error) and MLflow's error code / HTTP status, never from message text.
"""

from __future__ import annotations

TRANSIENT_HTTP = frozenset({408, 429, 502, 503, 504})
"""HTTP statuses of a server that is overloaded, restarting or behind a proxy that lost it."""
TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"})
"""MLflow error codes that mean "try again later"."""


def _transient_type(exc: BaseException) -> bool:
    import sqlite3

    import requests
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, (OSError, requests.ConnectionError, requests.Timeout, OperationalError,
                            sqlite3.OperationalError))


def is_transient(exc: BaseException) -> bool:
    """True for "tracking is unreachable right now" (connection refused or reset, timeout, an SQLite store
    locked or on an unreachable file system, 502/503/504/429, MLflow's TEMPORARILY_UNAVAILABLE)."""
    from mlflow.exceptions import MlflowException

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _transient_type(current):
            return True
        if isinstance(current, MlflowException):
            if current.error_code in TRANSIENT_CODES or current.get_http_status_code() in TRANSIENT_HTTP:
                return True
        current = current.__cause__ or current.__context__
    return False
