"""``hpcvit tracking serve``: the tracking server of a cluster, in one command.

One machine every node can reach (a login or service node) runs ``mlflow server`` on a private PostgreSQL
cluster (SQLite when PostgreSQL is not installed), with the runs' artifacts in a folder the server writes and
the clients upload to over HTTP (no shared mount needed). Bound for the nodes (``--allowed-hosts`` with this
host's names), with MLflow's basic authentication on, and its workers sized to PostgreSQL's connection limit.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

from hpcvit import fsio

POOL = 10
"""SQLAlchemy connections a server worker keeps, and as many more it may open at a peak."""
NETWORK_FILE_SYSTEMS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "fuse.glusterfs")


def file_system(path: Path) -> str:
    """The type of the file system holding ``path`` (``/proc/mounts``), or ``""``."""
    path, best, kind = Path(path).resolve(), "", ""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in mounts:
        fields = line.split()
        if len(fields) > 2 and (str(path) + "/").startswith(fields[1].rstrip("/") + "/") and len(fields[1]) > len(best):
            best, kind = fields[1], fields[2]
    return kind


def max_connections(workers: int) -> int:
    """PostgreSQL's connection limit for ``workers`` server workers (each up to ``2 * POOL``), with room to spare."""
    return max(100, workers * 2 * POOL + 20)


def auth_config(store: Path) -> tuple[Path, str]:
    """MLflow's basic-auth settings in ``store`` (users kept in ``store/basic_auth.db``, everyone may read, the
    runs' authors may write); the admin password, made once and kept in ``store/admin_password`` (mode 600)."""
    secret = store / "admin_password"
    if not secret.exists():
        fsio.write_text(secret, secrets.token_urlsafe(18))
        secret.chmod(0o600)
    password = secret.read_text().strip()
    ini = store / "basic_auth.ini"
    fsio.write_text(ini, "[mlflow]\ndefault_permission = READ\n"
                         f"database_uri = sqlite:///{(store / 'basic_auth.db').resolve()}\n"
                         "admin_username = admin\n"
                         "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return ini, password


def serve(args: argparse.Namespace) -> int:
    from hpcvit.tracking.postgres import binaries, start_postgres
    from hpcvit.tracking.server import (LOOPBACK, exit_on_hangup, port_in_use, start_server, stop_server,
                                       wait_in_foreground)

    store = Path(args.store).resolve()
    if store.exists() and not store.is_dir():
        raise ValueError(f"--store {store}: is a file; name a folder (made if missing)")
    if args.port and port_in_use("127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host, args.port):
        raise ValueError(f"--port {args.port}: already in use on this machine (choose another, or 0 for a free one)")
    exit_on_hangup()  # before PostgreSQL starts: a SIGTERM from here on still stops what was started
    os.umask(0o077)  # the auth database, the log and the artifacts are this user's alone
    store.mkdir(parents=True, exist_ok=True)
    store.chmod(0o711)  # PostgreSQL's own user passes through to its folder; nobody lists the store
    backend = args.backend or ("postgres" if binaries() else "sqlite")
    pg = None
    env = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(POOL), "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(POOL)}
    if backend == "postgres":
        pg = start_postgres(store / "postgres", max_connections=max_connections(args.workers))
        uri = pg.uri
        env.update(pg.env)
        print(f"PostgreSQL: {store / 'postgres'} on 127.0.0.1:{pg.port} (its password in {pg.env['PGPASSFILE']}, "
              "mode 600)", flush=True)
    elif backend == "sqlite":
        uri = f"sqlite:///{store / 'mlflow.db'}"
        kind = file_system(store)
        if kind in NETWORK_FILE_SYSTEMS:
            print(f"warning: {store} is on {kind}: SQLite's locks are unreliable on a network file system and the "
                  "store can be corrupted; keep --store on a local disk, or use --backend postgres", file=sys.stderr)
    else:
        uri = backend
    auth = args.auth if args.auth is not None else args.host not in LOOPBACK
    password = None
    if auth:
        ini, password = auth_config(store)
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=password,
                   MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
    proc = None
    try:
        proc, url = start_server(uri, store / "artifacts", args.port, args.host, log_path=store / "server.log",
                                 workers=args.workers, auth=auth, env=env, timeout=180)
        reach = url if args.host in LOOPBACK else url.replace("127.0.0.1", socket.gethostname(), 1)
        print(f"tracking server: {reach} ({args.workers} worker(s), {backend}, artifacts in {store / 'artifacts'})")
        print(f"in a job spec:   tracking: {{uri: {reach}}}   (or export MLFLOW_TRACKING_URI={reach})")
        if password:
            print("basic auth on; in the shell that submits (Slurm passes them on to the tasks):")
            print(f"  export MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=$(cat {store / 'admin_password'})")
        print(f"log: {store / 'server.log'}; Ctrl-C stops it", flush=True)
        return wait_in_foreground(proc, store / "server.log")
    except KeyboardInterrupt:
        return 0
    finally:
        if proc is not None:
            stop_server(proc)
        if pg is not None:
            pg.stop()


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535; 0 picks a free one)")
    return int(text)


def _backend(text: str) -> str:
    scheme = text.split("://")[0].split("+")[0] if "://" in text else ""
    if text in ("postgres", "sqlite") or scheme in ("postgresql", "mysql", "mssql", "sqlite"):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: postgres, sqlite, or a database URI (postgresql+psycopg2://...)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of workers")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``tracking serve`` to an ``argparse`` sub-parser set."""
    parser = subparsers.add_parser("tracking", help="run the tracking server a cluster's tasks log to",
                                   description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="tracking_command", required=True, metavar="serve")
    serve_p = sub.add_parser("serve", help="start mlflow server on PostgreSQL for the nodes (Ctrl-C stops it)",
                             description=__doc__)
    serve_p.add_argument("--store", default=os.path.join("runs", "tracking"),
                         help="folder of the database, artifacts, log and credentials (default: runs/tracking)")
    serve_p.add_argument("--backend", type=_backend, help="postgres (default when installed), sqlite, or a database "
                         "URI (postgresql+psycopg2://..., mysql://...)")
    serve_p.add_argument("--host", default="0.0.0.0", help="interface to bind (default 0.0.0.0: the nodes)")
    serve_p.add_argument("--port", type=_port, default=5000, help="port (default 5000; 0 picks a free one)")
    serve_p.add_argument("--workers", type=_positive, default=4, help="server worker processes (default 4)")
    serve_p.add_argument("--auth", action=argparse.BooleanOptionalAction, default=None,
                         help="MLflow's basic authentication (default: on unless bound to loopback)")
    serve_p.set_defaults(func=serve)
    return parser
