"""A lean ``mlflow server`` as a process of its own: started, ready when ``GET /health`` answers, stopped.

The server runs lean (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``, one uvicorn worker unless told: 2 processes,
~370 MB, instead of 15 processes and ~1.85 GB with MLflow's defaults), in its own process group, and counts as
ready only when ``GET /health`` answers ``OK``: its port is bound well before the worker answers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_ANY = {"0.0.0.0", "::", ""}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job runner and queue consumers
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GIT_PYTHON_REFRESH": "quiet",
    })
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def server_command(backend_uri: str, artifacts_dir: Path, port: int, host: str = "127.0.0.1", workers: int = 1,
                   auth: bool = False) -> list[str]:
    """The ``mlflow server`` argument list (no shell involved). ``auth``: MLflow's basic authentication (users
    and permissions in its own database; the admin account from ``MLFLOW_AUTH_CONFIG_PATH``)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
           "--artifacts-destination", str(Path(artifacts_dir).resolve()),
           "--host", host, "--port", str(port), "--workers", str(workers)]
    if auth:
        cmd += ["--app-name", "basic-auth"]
    if host not in LOOPBACK:
        # Other machines reach it by this host's name, which the default Host-header check refuses (403).
        # --allowed-hosts REPLACES MLflow's defaults (loopback, private address ranges): keep them, add the names.
        names = [socket.gethostname(), socket.getfqdn()] + ([] if host in _ANY or ":" in host else [host])
        allowed = _default_allowed_hosts() + [p for n in names if n for p in (n, f"{n}:*")]
        cmd += ["--allowed-hosts", ",".join(dict.fromkeys(allowed))]
    return cmd


def _default_allowed_hosts() -> list[str]:
    try:
        from mlflow.server.security_utils import get_default_allowed_hosts

        return list(get_default_allowed_hosts())
    except ImportError:  # fnmatch patterns; "[[]" escapes the IPv6 bracket
        return ["localhost", "127.0.0.1", "[::1]", "0.0.0.0", "localhost:*", "127.0.0.1:*", "[[]::1]:*",
                "0.0.0.0:*", "192.168.*", "10.*", *[f"172.{i}.*" for i in range(16, 32)], "fc00:*", "fd00:*"]


def _health(url: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            return resp.read().decode(errors="replace").strip()
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def start_server(backend_uri: str, artifacts_dir: Path | str, port: int = 0, host: str = "127.0.0.1",
                 timeout: float = 120.0, log_path: Path | str | None = None, workers: int = 1, auth: bool = False,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start a lean ``mlflow server`` on ``backend_uri`` and wait until ``GET /health`` answers ``OK``.

    ``port=0`` picks a free port. Returns the process (leader of its own process group; stop it with
    :func:`stop_server`) and the base URL, e.g. ``http://127.0.0.1:5000``. The server's output goes to
    ``log_path`` (default: a file in the temp directory, named in any error). Raises ``RuntimeError`` if
    the port is taken, the server exits, or it is not ready within ``timeout`` seconds (then it is stopped).
    """
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    probe = "127.0.0.1" if host in _ANY or host == "localhost" else host  # an address to test the port on
    if port == 0:
        port = free_port(probe)
    elif port_in_use(probe, port):
        raise RuntimeError(f"port {port} on {host} is already in use (choose another with --port)")
    url_host = "127.0.0.1" if host in _ANY else (f"[{host}]" if ":" in host else host)
    url = f"http://{url_host}:{port}"
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"mlflow-server-{port}-", suffix=".log")
        os.close(fd)
        log_path = name
    log_path = Path(log_path)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(server_command(backend_uri, artifacts_dir, port, host, workers, auth),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env={**_server_env(), **(env or {})}, start_new_session=True)
    proc.log_path = log_path  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with code {proc.returncode} before it was ready; "
                                   f"its log ({log_path}) ends with:\n{_tail(log_path)}")
            if _health(url) == "OK":
                return proc, url
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not ready ({url}/health) after {timeout:.0f} s; "
                                   f"its log ({log_path}) ends with:\n{_tail(log_path)}")
            time.sleep(0.5)
    except BaseException:
        stop_server(proc)
        raise


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_server(proc: subprocess.Popen, timeout: float = 60.0) -> int | None:
    """SIGTERM the server's process group, wait for all of it (SIGKILL after ``timeout``); the exit code."""
    pgid = proc.pid  # start_new_session: the server leads its own group
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(pgid) or proc.poll() is None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return proc.returncode


def exit_on_hangup() -> None:
    """SIGTERM and SIGHUP end this process by ``SystemExit``, so that its ``finally`` blocks stop the servers it
    started (each runs in a session of its own and would outlive it)."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)


def wait_in_foreground(proc: subprocess.Popen, log_path: Path) -> int:
    """Wait for a server run in the foreground until it exits on its own (1, its log named) or Ctrl-C."""
    code = proc.wait()
    print(f"mlflow server exited with code {code}; log: {log_path}", file=sys.stderr)
    return 1
