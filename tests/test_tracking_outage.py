"""The tracking outage classifier on real MLflow errors: outages are buffered, refusals are raised."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from hpcvit.tracking import is_transient, mlflow_client
from hpcvit.tracking.server import free_port


def _error(call) -> BaseException:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the error is what is tested
        return exc
    raise AssertionError("the call did not fail")


@pytest.fixture(autouse=True)
def _fast_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def test_a_server_that_is_down_is_an_outage() -> None:
    client = mlflow_client(f"http://127.0.0.1:{free_port()}")
    exc = _error(lambda: client.get_experiment("0"))
    assert isinstance(exc, MlflowException) and is_transient(exc)


class _Unavailable(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(503)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"service unavailable")

    def log_message(self, *args: object) -> None:
        pass


def test_a_server_answering_503_is_an_outage() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = mlflow_client(f"http://127.0.0.1:{server.server_address[1]}")
        assert is_transient(_error(lambda: client.get_experiment("0")))
    finally:
        server.shutdown()


def test_refused_values_and_missing_runs_are_not_outages(tmp_path: Path) -> None:
    client = mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("e"))
    client.log_param(run.info.run_id, "lr", "0.1")
    changed = _error(lambda: client.log_param(run.info.run_id, "lr", "0.2"))  # MLflow refuses a changed param
    assert isinstance(changed, MlflowException) and not is_transient(changed)
    missing = _error(lambda: client.get_run("0" * 32))
    assert isinstance(missing, MlflowException) and not is_transient(missing)
    assert not is_transient(ValueError("a bug"))


def test_error_codes_decide_not_message_text() -> None:
    assert is_transient(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}))
    assert not is_transient(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST",
                                           "message": "Connection timed out database is locked"}))
    import sqlite3

    try:
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as inner:
            raise MlflowException("store error", error_code=TEMPORARILY_UNAVAILABLE) from inner
    except MlflowException as exc:
        assert is_transient(exc)


def test_what_is_and_is_not_an_outage() -> None:
    """An overloaded server's BAD_REQUEST (its connection pool timed out) is one; an invalid URL, a missing file
    and a refused request are not: retrying them forever would never succeed."""
    import errno

    import requests

    pool = "QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00"
    assert is_transient(RestException({"error_code": "BAD_REQUEST", "message": pool}))
    assert not is_transient(RestException({"error_code": "BAD_REQUEST", "message": "Invalid value for param"}))
    assert not is_transient(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": pool}))
    assert not is_transient(requests.exceptions.InvalidURL("http://exa mple"))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "No such file", "/tmp/model.png"))
    assert not is_transient(PermissionError(errno.EACCES, "Permission denied"))
    assert is_transient(OSError(errno.ESTALE, "Stale file handle"))
    assert is_transient(requests.exceptions.ReadTimeout("read timed out"))
    response = requests.Response()
    for status, transient in ((500, True), (502, True), (429, True), (401, False), (404, False)):
        response.status_code = status
        assert is_transient(requests.HTTPError(response=response)) is transient, status
