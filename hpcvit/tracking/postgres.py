"""A private PostgreSQL cluster behind a tracking server: made once in a folder, started on loopback.

It listens on 127.0.0.1 only, its unix socket is its owner's alone, and its one role has a password (made once,
kept in ``pgpass``, mode 600, which the ``mlflow server`` beside it reads through ``PGPASSFILE``): another user
of the machine can neither connect nor read the runs around MLflow's authentication. PostgreSQL refuses to run
as root: as root, it runs as the ``postgres`` user that Debian's package creates.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

USER = "hpcvit"
"""The database's owner role (``initdb -U``)."""
DATABASE = "mlflow"


def binaries() -> Path | None:
    """The folder of PostgreSQL's server programs (``initdb``, ``postgres``), or None when not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # Debian links some of them elsewhere; all sit together here
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                      if p.parent.parent.name.isdigit() else 0)
    return versions[-1].parent if versions else None


class Postgres:
    """A running private cluster; :meth:`stop` ends it (fast shutdown)."""

    def __init__(self, proc: subprocess.Popen, port: int, folder: Path):
        self.proc, self.port, self.folder = proc, port, folder

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI MLflow takes (psycopg2: SQLAlchemy 2.1 maps plain ``postgresql://`` to psycopg 3);
        the password is not in it (a command line is visible to every user): :attr:`env` names the file."""
        return f"postgresql+psycopg2://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs in its environment to log in."""
        return {"PGPASSFILE": str(self.folder / "pgpass")}

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown (SIGINT) of the whole process group: ``runuser`` does not pass SIGINT on."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # until the postmaster itself has gone, not only runuser
            try:
                os.killpg(self.proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.1)


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start_postgres(folder: Path, port: int = 0, max_connections: int = 100, timeout: float = 60.0) -> Postgres:
    """Start the cluster kept in ``folder`` (made there first if new), with its ``mlflow`` database."""
    from hpcvit.tracking.server import free_port

    pg = binaries()
    if pg is None:
        raise RuntimeError("PostgreSQL is not installed here (Debian: apt install postgresql)")
    folder = Path(folder).resolve()
    data = folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    if owner is not None:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    if os.geteuid() == 0 and subprocess.run(_as_server_user(["test", "-w", str(folder)])).returncode != 0:
        raise RuntimeError(f"PostgreSQL runs as the user postgres, which cannot reach {folder} (a folder above it "
                           "is private to root): choose a --store it can reach, e.g. under /srv or /var/tmp")
    pgpass = folder / "pgpass"
    if not (data / "PG_VERSION").exists():
        password = secrets.token_urlsafe(24)
        pwfile = folder / "initdb-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, (password + "\n").encode())
        os.close(fd)
        if owner is not None:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        try:
            made = subprocess.run(_as_server_user([
                str(pg / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                "-E", "UTF8", "--no-instructions"]), capture_output=True, text=True)
        finally:
            pwfile.unlink(missing_ok=True)
        if made.returncode != 0:
            raise RuntimeError(f"initdb {data} failed: {' '.join(made.stderr.split())[:300]}")
        fd = os.open(pgpass, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # libpq refuses a wider mode
        os.write(fd, f"127.0.0.1:*:*:{USER}:{password}\n".encode())
        os.close(fd)
    port = port or free_port()
    log = open(folder / "postgres.log", "ab")
    proc = subprocess.Popen(_as_server_user([
        str(pg / "postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
        "-c", f"unix_socket_directories={folder}", "-c", "unix_socket_permissions=0700",
        "-c", f"max_connections={max_connections}"]),
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    server = Postgres(proc, port, folder)
    deadline = time.monotonic() + timeout
    while subprocess.run([str(pg / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", USER,
                          "-d", "postgres"]).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            tail = (folder / "postgres.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"PostgreSQL did not start in {folder} (log ends with: {tail.strip()})")
        time.sleep(0.3)
    made = subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE],
                          capture_output=True, text=True, env={**os.environ, **server.env})
    if made.returncode != 0 and "already exists" not in made.stderr:
        server.stop()
        raise RuntimeError(f"could not create the {DATABASE} database: {made.stderr.strip()}")
    return server
