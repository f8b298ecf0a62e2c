"""The MLflow UI on a sweep store: ``hpcvit ui`` and a reusable lean ``mlflow server`` start/stop.

The server runs lean (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``, one uvicorn worker: 2 processes, ~370 MB,
instead of 15 processes and ~1.85 GB with MLflow's defaults), in its own process group, and counts as ready only
when ``GET /health`` answers ``OK``: its port is bound well before the worker answers.
"""

from __future__ import annotations

import argparse
import json
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
from typing import Any

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_ANY = {"0.0.0.0", "::", ""}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
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


def server_command(backend_uri: str, artifacts_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """The ``mlflow server`` argument list (no shell involved)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
           "--artifacts-destination", str(Path(artifacts_dir).resolve()),
           "--host", host, "--port", str(port), "--workers", "1"]
    if host not in _LOOPBACK:
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
                 timeout: float = 120.0, log_path: Path | str | None = None) -> tuple[subprocess.Popen, str]:
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
    elif _port_in_use(probe, port):
        raise RuntimeError(f"port {port} on {host} is already in use (choose another with --port)")
    url_host = "127.0.0.1" if host in _ANY else (f"[{host}]" if ":" in host else host)
    url = f"http://{url_host}:{port}"
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"mlflow-server-{port}-", suffix=".log")
        os.close(fd)
        log_path = name
    log_path = Path(log_path)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(server_command(backend_uri, artifacts_dir, port, host), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, env=_server_env(), start_new_session=True)
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


def runs_url(base_url: str, experiment_id: str | None = None) -> str:
    """The runs table of an experiment (``#/experiments/<id>`` opens a GenAI overview in MLflow 3)."""
    if experiment_id is None:
        return f"{base_url}/#/experiments"
    return f"{base_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def compare_url(base_url: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's run-comparison page for ``run_ids`` of one experiment."""
    runs = json.dumps(list(run_ids), separators=(",", ":"))
    return f"{base_url}/#/compare-runs?runs={runs}&experiments={json.dumps([experiment_id])}"


def _find_experiment(output_dir: Path, backend_uri: str, sweep: str | None) -> tuple[str | None, str | None]:
    """(experiment_id, sweep_id) of the named or newest sweep in ``output_dir`` tracked in ``backend_uri``."""
    from hpcvit.ledger import find_sweep

    try:
        sweep_dir = find_sweep(sweep, output_dir)
    except FileNotFoundError:
        if sweep:
            raise
        return None, None
    m = sweep_dir.manifest
    if m.get("tracking_uri") != backend_uri:
        if sweep:
            raise ValueError(f"sweep {sweep_dir.sweep_id} is tracked in {m.get('tracking_uri')}, not in "
                             f"{backend_uri}: open that store's own UI")
        return None, None
    return m.get("experiment_id"), sweep_dir.sweep_id


def sweep_view_url(output_dir: Path, sweep_id: str, base_url: str) -> str:
    """The URL of the sweep's runs table in its shared view (set again here: sweeps made before it existed)."""
    from hpcvit.ledger import find_sweep
    from hpcvit.results.view import share, view_url
    from hpcvit.tracking import mlflow_client

    sweep = find_sweep(sweep_id, output_dir)
    key = share(mlflow_client(sweep.manifest["tracking_uri"]), sweep)
    return view_url(base_url, sweep.manifest["experiment_id"], key)


def _finished_runs(output_dir: Path, sweep_id: str) -> list[str]:
    """Run ids of the sweep's finished child runs, in task order."""
    from hpcvit.ledger import find_sweep
    from hpcvit.tracking import child_runs, names

    m = find_sweep(sweep_id, output_dir).manifest
    runs = [r for r in child_runs(m["tracking_uri"], m["experiment_id"], m["parent_run_id"])
            if r.info.status == "FINISHED"]
    return [r.info.run_id for r in sorted(runs, key=lambda r: int(r.data.tags.get(names.TASK_INDEX_TAG, 0)))]


def _run(args: argparse.Namespace) -> int:
    output_dir = Path(args.output_dir).resolve()
    db = output_dir / "mlflow.db"
    if not db.exists():
        raise FileNotFoundError(f"no MLflow store at {db} (submit a sweep first, or pass --output-dir)")
    backend_uri = f"sqlite:///{db}"
    experiment_id, sweep_id = _find_experiment(output_dir, backend_uri, args.sweep)
    print(f"starting the MLflow UI on {backend_uri} (lean: 1 worker, no job runner; ready in ~15 s)", flush=True)

    def _exit(signum: int, _frame: Any) -> None:  # the server has its own session: stop it on our way out
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)
    proc, url = start_server(backend_uri, output_dir / "mlartifacts", args.port, args.host,
                             log_path=output_dir / "mlflow-ui.log")
    try:
        target = runs_url(url, experiment_id)
        if sweep_id:
            target = sweep_view_url(output_dir, sweep_id, url)
            print(f"sweep {sweep_id}, its runs side by side (ranking metric of each split, swept parameters, sorted): "
                  f"{target}", flush=True)
            finished = _finished_runs(output_dir, sweep_id)
            if finished:
                print(f"MLflow's comparison of its {len(finished)} finished run(s): "
                      f"{compare_url(url, experiment_id, finished)}", flush=True)
        else:
            print(f"MLflow UI (experiments): {target}", flush=True)
        if args.open:
            import webbrowser

            if not webbrowser.open(target):
                print("no browser found here: open the URL above in yours (through an SSH tunnel from a laptop)",
                      flush=True)
        if args.host not in _LOOPBACK:
            port = url.rsplit(":", 1)[1]
            print(f"listening on {args.host}:{port}; from another machine open it by this host's name or "
                  f"address, or through an SSH tunnel: ssh -L {port}:127.0.0.1:{port} <this host>", flush=True)
        print("press Ctrl-C to stop", flush=True)
        code = proc.wait()
        print(f"mlflow server exited with code {code}; log: {output_dir / 'mlflow-ui.log'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_server(proc)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``ui`` command to an ``argparse`` sub-parser set; sets ``func(args) -> int``."""
    parser = subparsers.add_parser(
        "ui", help="open the MLflow UI on the sweeps' tracking store",
        description="Start a lean MLflow server (one worker, no job runner) on <output-dir>/mlflow.db and print "
                    "the URL of the runs page of the newest (or the given) sweep's experiment. Ctrl-C stops it.")
    parser.add_argument("sweep", nargs="?", help="sweep id or directory whose experiment to show (default: newest)")
    parser.add_argument("--output-dir", default="runs", help="directory holding the sweeps and mlflow.db "
                                                             "(default: runs)")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--open", action="store_true", help="open the comparison (or runs) page in a browser")
    parser.set_defaults(func=_run)
    return parser


__all__ = ["add_parser", "compare_url", "free_port", "runs_url", "server_command", "start_server", "stop_server",
           "sweep_view_url"]
