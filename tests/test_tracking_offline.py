"""Tracking outages: training goes on while the MLflow server is down, `hpcvit sync` sends what was buffered."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hpcvit.ledger import find_sweep
from hpcvit.tracking.server import start_server, stop_server
from tests.conftest import SPEC, children, hpcvit, steps, wait_for, write_spec

pytestmark = pytest.mark.slow
EPOCHS = 10


def test_server_outage_is_buffered_and_synced(workdir: Path) -> None:
    store = workdir / "server"
    backend = f"sqlite:///{store / 'mlflow.db'}"
    proc, url = start_server(backend, store / "artifacts", log_path=workdir / "server.log")
    port = int(url.rsplit(":", 1)[1])
    try:
        spec = write_spec(workdir, SPEC.format(name="outage", n=2400, size=16, epochs=EPOCHS)
                          + f"tracking:\n  uri: {url}\n")
        assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
        sweep = find_sweep(None, workdir / "runs")
        task = sweep.task(0)
        wait_for(lambda: task.progress().get("epoch", 0) >= 2, 240, "two epochs logged while the server is up")
    finally:
        stop_server(proc)
    wait_for(lambda: task.state().get("state") in ("COMPLETED", "FAILED"), 300, "training to end without tracking")
    assert task.state()["state"] == "COMPLETED", task.log.read_text()[-3000:]
    # the task's end tried once more: what it could not send waits, in order, in the buffer (and in the part
    # moved aside for that replay)
    buffered = "".join(p.read_text() for p in sorted(task.path.glob("tracking_buffer.jsonl*")))
    assert '"op": "epoch"' in buffered and '"op": "end"' in buffered
    assert "tracking unreachable" in task.log.read_text()
    down = hpcvit("status", cwd=workdir)  # never a traceback: the state, and two lines saying what waits
    assert down.returncode == 0 and "COMPLETED" in down.stdout, down.stderr
    assert "does not answer" in down.stderr and "1 task(s) hold calls MLflow has not received" in down.stderr
    for words in (["compare"], ["compare", "--format", "json"], ["ui"]):  # what needs the store says so in a line
        refused = hpcvit(*words, cwd=workdir)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert "error: the tracking store does not answer (" in refused.stderr, refused.stderr

    proc, url2 = start_server(backend, store / "artifacts", port=port, log_path=workdir / "server2.log")
    try:
        assert url2 == url
        synced = hpcvit("sync", cwd=workdir)
        assert synced.returncode == 0 and "buffered tracking call(s) sent" in synced.stdout, synced.stdout
        assert not list(task.path.glob("tracking_buffer.jsonl*"))
        (run,) = children(sweep)
        assert run.info.status == "FINISHED"
        assert steps(sweep, run.info.run_id, "val_loss") == list(range(EPOCHS))  # nothing lost, nothing twice
        names = {a.path for a in MlflowClient(url).list_artifacts(run.info.run_id, "roc")}
        assert "roc/roc_curve.png" in names
        again = hpcvit("sync", cwd=workdir)
        assert "nothing buffered" in again.stdout
    finally:
        stop_server(proc)
