"""Tracking for many tasks: runs made once at submit, replays that lose nothing while a task still buffers, a
burst of task processes on the SQLite file, and the cluster's tracking server (PostgreSQL, basic auth)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from benchmarks.tracking_scale import burst, make_sweep
from hpcvit.ledger import SweepDir, find_sweep
from hpcvit.tracking import names
from hpcvit.tracking.children import _drop_duplicates, create_task_runs
from hpcvit.tracking.postgres import binaries
from hpcvit.tracking.server import start_server, stop_server
from hpcvit.tracking.task_run import TaskTracker, sync_task
from hpcvit.tracking.upkeep import pending_buffers
from tests.conftest import SPEC, hpcvit, steps, wait_for, write_spec


def test_task_runs_are_made_at_submit(tmp_path: Path) -> None:
    sweep, _ = make_sweep(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", 3)
    m = sweep.manifest
    client = MlflowClient(m["tracking_uri"])
    ids = sweep.task_runs()
    assert sorted(ids) == [0, 1, 2] and len(set(ids.values())) == 3
    for i, run_id in ids.items():
        run = client.get_run(run_id)
        assert run.info.status == "SCHEDULED" and run.data.tags[names.STATE_TAG] == "SUBMITTED"
        assert run.data.tags[names.TASK_KEY_TAG] == sweep.task(i).key
        assert run.data.tags[names.PARENT_TAG] == m["parent_run_id"] and run.info.run_name == f"{i:04d}-t{i}"
    task = sweep.task(1).ensure()
    assert task.run_id() == ids[1] and not task.run_opened()
    tracker = TaskTracker(m["tracking_uri"], m["experiment_id"], m["parent_run_id"], task, tags={"a": "b"})
    assert tracker.run_id == ids[1] and not tracker.resumed and task.run_opened()
    assert client.get_run(ids[1]).info.status == "RUNNING"
    again = TaskTracker(m["tracking_uri"], m["experiment_id"], m["parent_run_id"], task, tags={})
    assert again.resumed and again.run_id == ids[1]
    # a retried submit keeps the runs it made; nothing is made twice
    assert create_task_runs(m["tracking_uri"], m["experiment_id"], m["parent_run_id"],
                            {sweep.task(i).key: {} for i in range(3)}) == {sweep.task(i).key: ids[i] for i in range(3)}
    assert len(client.search_runs([m["experiment_id"]], f"tags.`{names.PARENT_TAG}` = '{m['parent_run_id']}'")) == 3


def test_a_second_run_left_by_a_retried_create_is_deleted(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("dups")
    parent = client.create_run(experiment).info.run_id
    tags = {names.PARENT_TAG: parent, names.TASK_KEY_TAG: "s/00000"}
    lost = client.create_run(experiment, tags=tags).info.run_id  # the answer that never reached the client
    kept = client.create_run(experiment, tags=tags).info.run_id  # the retry's
    other = client.create_run(experiment, tags={**tags, names.TASK_KEY_TAG: "s/00001"}).info.run_id
    runs = client.search_runs([experiment])
    assert _drop_duplicates(client, runs, {"s/00000": kept, "s/00001": other}) == {"s/00000": kept, "s/00001": other}
    assert client.get_run(lost).info.lifecycle_stage == "deleted"
    assert {r.info.run_id for r in client.search_runs([experiment])} == {parent, kept, other}


@pytest.mark.slow
def test_a_burst_of_tasks_on_the_sqlite_file_lands_whole(tmp_path: Path) -> None:
    """The SQLite file's target (benchmarks/tracking_scale.py runs it at 50): every metric point in the store
    after the replay, one run per task, none left RUNNING or SCHEDULED, no task failed."""
    row = burst(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", 16, epochs=4)
    assert row["failed"] == 0, row["first_error"]
    assert (row["landed_after"], row["duplicates"], row["running"]) == (1.0, 0, 0), row


WRITER = """
import sys, time
from pathlib import Path
from hpcvit.ledger import SweepDir
from hpcvit.tracking.task_run import TaskTracker
root, go = Path(sys.argv[1]), Path(sys.argv[2])
task = SweepDir(root).task(0).ensure()
m = task.sweep.manifest
tracker = TaskTracker(m["tracking_uri"], m["experiment_id"], m["parent_run_id"], task, tags={})
for epoch in range(300):
    if epoch == 50:
        (root / "buffered").touch()
        while not go.exists():
            time.sleep(0.05)
    tracker.log_epoch(epoch, {"val_loss": 1.0 / (epoch + 1)})
    time.sleep(0.005)
tracker.end("FINISHED")
"""


@pytest.mark.slow
def test_sync_while_the_task_still_buffers_loses_no_line(tmp_path: Path) -> None:
    """A task buffers through an outage and goes on appending while ``sync`` replays its buffer: every epoch
    lands exactly once (the buffer is moved aside before it is read; what is appended meanwhile goes next)."""
    backend = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    proc, url = start_server(backend, tmp_path / "store" / "artifacts", log_path=tmp_path / "server.log")
    port = int(url.rsplit(":", 1)[1])
    try:
        sweep, _ = make_sweep(tmp_path, url, 1)
    finally:
        stop_server(proc)
    go = tmp_path / "go"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(sweep.root), str(go)], cwd=Path(__file__).parents[1])
    wait_for(lambda: (sweep.root / "buffered").exists() or writer.poll() is not None, 120, "the writer to buffer")
    assert writer.poll() is None
    proc, _ = start_server(backend, tmp_path / "store" / "artifacts", port=port, log_path=tmp_path / "server2.log")
    try:
        m = sweep.manifest
        go.touch()
        while writer.poll() is None:  # sync again and again while the task appends
            sync_task(url, m["experiment_id"], m["parent_run_id"], sweep.task(0))
        assert writer.returncode == 0
        sync_task(url, m["experiment_id"], m["parent_run_id"], sweep.task(0))
        assert not pending_buffers(sweep)
        # the buffer was moved aside and replayed several times while the task appended to a new one
        assert len(list(sweep.task(0).path.glob("tracking_buffer.synced-*"))) >= 2
        run_id = sweep.task(0).run_id()
        assert steps(sweep, run_id, "val_loss") == list(range(300))
        assert MlflowClient(url).get_run(run_id).info.status == "FINISHED"
    finally:
        stop_server(proc)


def _serve(store: Path, *extra: str) -> tuple[subprocess.Popen, str, list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "hpcvit.cli", "tracking", "serve", "--store", str(store),
                             "--host", "127.0.0.1", "--port", "0", "--workers", "2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith("tracking server: "):
            return proc, line.split()[2], lines
    proc.kill()
    raise AssertionError("tracking serve did not start:\n" + "\n".join(lines))


@pytest.mark.slow
@pytest.mark.skipif(binaries() is None, reason="PostgreSQL is not installed (CI installs Debian's postgresql)")
def test_tracking_serve_on_postgres_with_auth_runs_a_sweep(workdir: Path) -> None:
    if os.geteuid() == 0:  # PostgreSQL runs as its own user: a private folder above the store is refused
        private = workdir / "private"
        private.mkdir(mode=0o700)
        failed = subprocess.run([sys.executable, "-m", "hpcvit.cli", "tracking", "serve", "--store",
                                 str(private / "tracking"), "--port", "0"], capture_output=True, text=True, timeout=120)
        assert failed.returncode == 1 and "cannot reach" in failed.stderr, failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    reachable = Path(tempfile.mkdtemp(prefix="hpcvit-tracking-"))
    reachable.chmod(0o755)
    store = reachable / "tracking"
    proc, url, lines = _serve(store, "--auth")
    try:
        (pg_line,) = [line for line in lines if line.startswith("PostgreSQL: ")]
        pg_port = int(pg_line.split("127.0.0.1:")[1].split()[0])
        import psycopg2

        with pytest.raises(psycopg2.OperationalError, match="password"):  # no one logs in without the password
            psycopg2.connect(host="127.0.0.1", port=pg_port, user="hpcvit", dbname="mlflow", connect_timeout=10,
                             passfile=os.devnull)
        assert oct((store / "postgres" / "pgpass").stat().st_mode & 0o777) == "0o600"
        spec = write_spec(workdir, SPEC.format(name="pg", n=160, size=8, epochs=2) + f"tracking:\n  uri: {url}\n")
        for words in (["--dry-run"], []):  # no credentials: one line saying what to export, nothing submitted
            refused = hpcvit("submit", str(spec), "optim.seed=[7,8]", *words, cwd=workdir)
            assert refused.returncode == 2 and "(401, not authenticated): export MLFLOW_TRACKING_USERNAME" \
                in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert not (workdir / "runs").exists() or not list((workdir / "runs").glob("*/manifest.json"))
        env = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": (store / "admin_password").read_text()}
        os.environ.update(env)
        try:
            done = hpcvit("submit", str(spec), "optim.seed=[7,8]", "--wait", cwd=workdir)
            assert done.returncode == 0, done.stdout + done.stderr
            sweep = find_sweep(None, workdir / "runs")
            m = sweep.manifest
            client = MlflowClient(url)
            runs = client.search_runs([m["experiment_id"]], f"tags.`{names.PARENT_TAG}` = '{m['parent_run_id']}'")
            assert sorted(r.data.tags[names.TASK_KEY_TAG] for r in runs) == [t.key for t in sweep.tasks()]
            assert {r.info.status for r in runs} == {"FINISHED"}
            assert client.get_run(m["parent_run_id"]).data.tags[names.SUMMARY_TAG] == "logged"
            assert sweep.n_tasks == 2
            ui = hpcvit("ui", cwd=workdir, timeout=60)  # the server's own pages: no server of its own started
            assert ui.returncode == 0 and f"is tracked on {url}; its runs side by side: {url}/#/experiments/" \
                in ui.stdout and "viewStateShareKey=" in ui.stdout, ui.stdout + ui.stderr
        finally:
            for key in env:
                os.environ.pop(key)
        # a new shell without the credentials: status still shows the tasks, and a line says what to export
        status = hpcvit("status", cwd=workdir)
        assert status.returncode == 0 and "COMPLETED" in status.stdout and "Traceback" not in status.stderr
        compare = hpcvit("compare", cwd=workdir)
        assert compare.returncode == 1 and "refused hpcvit (401, not authenticated)" in compare.stderr
        assert "Traceback" not in compare.stderr, compare.stderr
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(90)
    data = str(store / "postgres" / "data")
    left = subprocess.run(["pgrep", "-f", data], capture_output=True, text=True).stdout.strip()
    shutil.rmtree(reachable, ignore_errors=True)
    assert not left, f"PostgreSQL still runs after the server stopped: {left}"


def test_sweep_dir_task_runs_is_checked(tmp_path: Path) -> None:
    sweep, _ = make_sweep(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", 1)
    (sweep.root / SweepDir.TASK_RUNS).write_text('{"0": "not an id!"}')
    from hpcvit.fsio import DamagedFileError

    with pytest.raises(DamagedFileError, match="not an MLflow run id"):
        SweepDir(sweep.root).task(0).run_id()


@pytest.mark.parametrize("words, expected", [
    (["--port", "70000"], "is not a port"), (["--backend", "bogus"], "a database URI"),
    (["--workers", "0"], "not a positive number of workers")])
def test_tracking_serve_refuses_bad_arguments_before_starting_anything(tmp_path: Path, words: list[str],
                                                                       expected: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "hpcvit.cli", "tracking", "serve", "--store", str(tmp_path / "s"),
                           *words], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "s").exists()
