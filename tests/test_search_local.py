"""Adaptive search on the local executor, end to end: a rung with a failed task, an interrupted search resumed,
and the winner bitwise identical to the same configuration trained straight (in-process twin)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from hpcvit.ledger import SweepDir, find_sweep
from hpcvit.training.loop import Trainer
from tests.conftest import children, final_weights, hpcvit, steps, wait_for, write_spec
from tests.test_search import fresh, search_spec, twin_spec
from tests.test_train_features import make_sweep

pytestmark = pytest.mark.slow


def straight_twin(workdir: Path, sweep: SweepDir, index: int) -> dict[str, torch.Tensor]:
    """Final weights of the task's configuration trained straight to its epochs in-process."""
    spec = sweep.run_spec(index)
    twin = make_sweep(fresh(workdir / f"twin{index}"), twin_spec("twin", repr(spec.optim.lr), spec.optim.epochs,
                                                                n=spec.data.synthetic.n_samples),
                      tracking=False)
    trainer = Trainer(twin.task(0))
    assert trainer.run() == 0
    trainer.run_lock.release()
    return final_weights(twin, 0)


def check_outcome(workdir: Path, sweep: SweepDir) -> int:
    """The search's record against the tasks, MLflow and the twin; returns the winner."""
    record = sweep.search()
    first, last = record["rungs"][0], record["rungs"][-1]
    assert len(record["rungs"]) == 2 and first["decision"] and last["decision"]
    winner = first["decision"]["promoted"][0]
    finished = [i for i in first["tasks"] if i not in first["decision"]["lost"]]
    values = {int(i): v for i, v in first["decision"]["values"].items()}
    assert winner == max(finished, key=lambda i: (values[i], -i)), "the best value at the rung's epoch is promoted"
    states = {t.index: t.state()["state"] for t in sweep.tasks()}
    assert states[winner] == "COMPLETED"
    for i in first["decision"]["stopped"]:
        assert states[i] == "STOPPED_EARLY" and sweep.task(i).progress()["epoch"] == first["epochs"]
        assert values[i] == sweep.task(i).rung_done()["metrics"]["val_roc_auc"]
    runs = {r.data.tags["hpcvit.task_index"]: r for r in children(sweep)}
    assert len(runs) == sweep.n_tasks, "one MLflow run per configuration"
    win = runs[str(winner)]
    assert win.info.status == "FINISHED" and win.data.tags["hpcvit.search.outcome"] == "completed"
    assert steps(sweep, win.info.run_id, "val_loss") == list(range(sweep.run_spec(winner).optim.epochs))
    for i in first["decision"]["stopped"]:
        run = runs[str(i)]
        assert run.info.status == "FINISHED" and run.data.tags["hpcvit.state"] == "STOPPED_EARLY"
        assert run.data.tags["hpcvit.search.outcome"] == "stopped_early"
    twin = straight_twin(workdir, sweep, winner)
    mine = final_weights(sweep, winner)
    assert all(torch.equal(mine[k], twin[k]) for k in mine), "the promoted winner must equal its straight twin"
    return winner


def test_a_rung_with_a_failed_task_promotes_among_those_that_finished(workdir: Path) -> None:
    # lr 1e30: the first step's weights are not finite, so the task ends FAILED (optim.nonfinite: stop)
    spec = write_spec(workdir, search_spec("halve", lrs="3e-3, 1e30, 1e-2", max_epochs=3))
    dry = hpcvit("validate", str(spec), cwd=workdir, check=True).stdout
    assert "rung 0: 3 x 1 epochs, rung 1: 1 x 3 epochs; at most 5 epochs vs 9 for the full grid" in dry
    proc = hpcvit("submit", str(spec), "--wait", cwd=workdir, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]  # the failed task: not all final
    sweep = find_sweep(None, workdir / "runs")
    first = sweep.search()["rungs"][0]["decision"]
    assert first["lost"] == [1] and "1 of 3 task(s) did not finish rung 0 (FAILED)" in first["note"]
    assert first["by"].startswith("launcher of task "), "locally the rung's last launcher decides"
    assert sweep.task(1).state()["state"] == "FAILED"
    check_outcome(workdir, sweep)
    assert "rung 0 (1 epochs, 3 task(s))" in proc.stdout and "lost [1]" in proc.stdout
    assert "epochs trained" in proc.stdout and "vs 9 for the full grid" in proc.stdout
    rows = {r["task"]: r for r in json.loads(hpcvit("compare", "--format", "json", cwd=workdir, check=True).stdout)}
    decision = sweep.search()["rungs"][0]["decision"]
    winner = decision["promoted"][0]
    assert rows[winner]["outcome"] == "completed" and rows[winner]["rung"] == 1 and rows[winner]["rung1"] is not None
    assert rows[1]["outcome"] == "lost" and rows[1]["rung"] == 0
    for i in decision["stopped"]:
        assert rows[i]["outcome"] == "stopped_early" and rows[i]["rung0"] == decision["values"][str(i)]
        assert rows[i]["rung1"] is None
    csv_head = hpcvit("compare", "--format", "csv", cwd=workdir, check=True).stdout.splitlines()[0].split(",")
    assert {"rung", "outcome", "rung0", "rung1"} <= set(csv_head)
    assert "pruned" in hpcvit("compare", cwd=workdir, check=True).stdout
    resumed = hpcvit("resume", cwd=workdir, check=True).stdout
    assert "nothing to resume" in resumed, "a task lost in a decided rung is not resubmitted"


def test_an_interrupted_search_resumes_where_it_stopped(workdir: Path) -> None:
    spec = write_spec(workdir, search_spec("interrupt", lrs="3e-3, 1e-2, 2e-2", max_epochs=3, n=256))
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    wait_for(lambda: any(t.state().get("state") == "RUNNING" for t in sweep.tasks()), 240, "rung 0 to run")
    assert hpcvit("cancel", cwd=workdir, check=True).returncode == 0
    wait_for(lambda: all(json.loads(hpcvit("status", "--format", "json", cwd=workdir, check=True).stdout)[i]["state"]
                         in ("CANCELLED", "RUNG_DONE") for i in range(3)), 240, "rung 0 to stop")
    assert sweep.search()["cancelled"] and sweep.search()["rungs"][0]["decision"] is None, \
        "a cancelled search decides nothing"
    proc = hpcvit("resume", "--wait", cwd=workdir, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not sweep.search()["cancelled"]
    winner = check_outcome(workdir, sweep)
    client = MlflowClient(sweep.manifest["tracking_uri"])
    parent = client.get_run(sweep.manifest["parent_run_id"])
    assert parent.info.status == "FINISHED", "the sweep's run ends when the search has"
    assert sweep.task(winner).state()["restarts"] >= 1
