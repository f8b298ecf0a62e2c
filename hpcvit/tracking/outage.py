"""Is a tracking error an outage (retry later, buffer meanwhile) or a refusal (a bug, a bad value)?

Decided from the exception's type, its chain (MLflow wraps a refused connection in an ``MlflowException``
whose ``__context__`` is the ``requests`` error) and MLflow's error code / HTTP status; from the message only for
the overload a server reports as BAD_REQUEST (:data:`OVERLOAD_MARKS`).
"""

from __future__ import annotations

import errno

TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"})
"""MLflow error codes that mean "try again later"."""
TRANSIENT_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
    errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN, errno.ESTALE, errno.EPIPE, errno.EIO})
"""Operating-system errors of a network, or of a network file system holding the store, that is away."""


OVERLOAD_MARKS = ("QueuePool limit", "database is locked")
"""What an overloaded ``mlflow server`` answers as a plain BAD_REQUEST (its database connection pool timed out,
its SQLite file stayed locked): the message is the only mark of these, so they are matched there, and only
there."""


def transient_http(status: int | None) -> bool:
    """A server that is overloaded, restarting or behind a proxy that lost it: 408, 429 and every 5xx."""
    return status is not None and (status in (408, 429) or 500 <= status < 600)


def _transient_type(exc: BaseException) -> bool:
    import sqlite3

    import requests
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, (requests.ConnectionError, requests.Timeout, OperationalError, sqlite3.OperationalError,
                        ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return transient_http(exc.response.status_code)
    if isinstance(exc, requests.RequestException):  # an invalid URL, too many redirects: not an outage
        return False
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def is_transient(exc: BaseException) -> bool:
    """True for "tracking is unreachable right now": a connection refused or reset, a timeout, an SQLite store
    locked or on a file system that is away, 408/429/5xx, MLflow's TEMPORARILY_UNAVAILABLE. A missing file, an
    invalid URL or a refused value is not an outage: retrying it would never succeed."""
    from mlflow.exceptions import MlflowException

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _transient_type(current):
            return True
        if isinstance(current, MlflowException):
            if current.error_code in TRANSIENT_CODES or transient_http(current.get_http_status_code()):
                return True
            if current.error_code in ("BAD_REQUEST", "INTERNAL_ERROR") and any(
                    mark in current.message for mark in OVERLOAD_MARKS):
                return True
        current = current.__cause__ or current.__context__
    return False


def short_reason(exc: BaseException) -> str:
    """The cause of a tracking error in a few words (``[Errno 111] Connection refused``, ``HTTP 403``)."""
    import re

    text = " ".join(str(exc).split())
    found = re.search(r"\[Errno -?\d+\] [^'\")(]+", text) or re.search(r"(Read timed out|timed out|"
                                                                      r"Name or service not known)", text)
    if found:
        return found.group(0).strip()
    return text[:160] + ("..." if len(text) > 160 else "") or type(exc).__name__


def refused_access(exc: BaseException) -> int | None:
    """401 or 403 when the tracking server refused the credentials (or their absence), else None."""
    import requests
    from mlflow.exceptions import MlflowException

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = current.get_http_status_code() if isinstance(current, MlflowException) else \
            current.response.status_code if isinstance(current, requests.HTTPError) and current.response is not None \
            else None
        if status in (401, 403):
            return status
        current = current.__cause__ or current.__context__
    return None


def outage_line(exc: BaseException) -> str | None:
    """One line for a command that could not use the tracking store (it does not answer, or it refuses these
    credentials), or None for any other error."""
    if is_transient(exc):
        return (f"the tracking store does not answer ({short_reason(exc)}): start it again (hpcvit tracking serve "
                "for a server), or try later")
    status = refused_access(exc)
    if status is not None:
        what = "not authenticated" if status == 401 else "these credentials may not do this"
        return (f"the tracking server refused hpcvit ({status}, {what}): export MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD as hpcvit tracking serve printed")
    return None
