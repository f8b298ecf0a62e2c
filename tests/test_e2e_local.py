"""End to end on the local executor: real submitit jobs, real torchrun with 2 gloo ranks, real MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from hpcvit.ledger import find_sweep
from tests.conftest import (SPEC, TWO_MODELS, checkpoint_differences, children, final_weights, hpcvit, kill_tree,
                            parent_run, start_lines, steps, wait_for, write_spec)

pytestmark = pytest.mark.slow



def test_two_models_two_ranks_end_to_end(workdir: Path) -> None:
    spec = write_spec(workdir, SPEC.format(name="e2e", n=480, size=16, epochs=2) + TWO_MODELS)
    proc = hpcvit("submit", str(spec), "--wait", cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = find_sweep(None, workdir / "runs")
    assert "COMPLETED" in proc.stdout and "val_roc_auc" in proc.stdout
    # in a pipe, the wait reports one line per change, on stderr (stdout keeps the tables)
    assert "task 0 (cnn_small): COMPLETED" in proc.stderr and "task 1 (vit_seed): RUNNING epoch" in proc.stderr
    runs = children(sweep)
    assert sorted(r.data.tags["hpcvit.model"] for r in runs) == ["cnn_small", "vit_seed"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert steps(sweep, run.info.run_id, "val_roc_auc") == [0, 1]
        assert run.data.params["dist.world_size"] == "2"
        assert run.data.tags["hpcvit.sweep_id"] == sweep.sweep_id
        assert 0.0 <= run.data.metrics["val_roc_auc"] <= 1.0
    assert parent_run(sweep).info.status == "FINISHED"
    assert (workdir / "runs" / "mlflow.db").exists()
    log = sweep.task(0).log.read_text()
    assert "2 rank(s) on cpu" in log and "finished" in log


def test_sigkill_then_resume_continues_from_checkpoint(workdir: Path) -> None:
    spec = write_spec(workdir, SPEC.format(name="kill", n=1600, size=16, epochs=20))
    proc = hpcvit("submit", str(spec), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    sweep = find_sweep(None, workdir / "runs")
    task = sweep.task(0)
    wait_for(lambda: task.progress().get("epoch", 0) >= 2, 240, "the task to finish two epochs")
    kill_tree(task.state()["pid"])  # launcher, torchrun and both ranks: no chance to save
    wait_for(lambda: json.loads(hpcvit("status", "--format", "json", cwd=workdir, check=True).stdout)[0]["state"]
             == "LOST", 30, "status to report the task LOST")
    last_saved = max(json.loads(p.read_text())["step"] for p in task.checkpoints.glob("ckpt-*.json"))
    assert not (task.path / "stopped.json").exists()
    lost = children(sweep)[0]
    assert lost.info.status == "KILLED" and lost.data.tags["hpcvit.state"] == "LOST"  # not RUNNING forever

    resumed = hpcvit("resume", "--wait", cwd=workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resubmitted 1 task(s)" in resumed.stdout
    starts = start_lines(task.log)
    assert len(starts) == 2
    assert " start: epoch 0 step 0/" in starts[0]
    assert " start: epoch 0 step" not in starts[1], starts[1]  # not from scratch
    ckpt_meta = sorted(task.checkpoints.glob("ckpt-*.json"))
    assert json.loads(ckpt_meta[-1].read_text())["epoch"] == 20
    runs = children(sweep)
    assert len(runs) == 1, "the resumed task must continue its MLflow run, not start a second one"
    assert runs[0].info.status == "FINISHED"
    assert steps(sweep, runs[0].info.run_id, "val_loss") == list(range(20))
    assert int(runs[0].data.params["optim.epochs"]) == 20
    # At most one checkpoint interval (5 steps) lost: the resumed run started from the last saved step.
    per_epoch = int(starts[0].split(" step 0/")[1].split()[0])
    epoch, step = (int(v) for v in starts[1].split(" start: epoch ")[1].split(" step ")[0:1] +
                   [starts[1].split(" step ")[1].split("/")[0]])
    assert epoch * per_epoch + step == last_saved


@pytest.mark.parametrize("ranks", [2, 4])
def test_preempted_task_resumes_bitwise_identical(workdir: Path, ranks: int) -> None:
    # four ranks: a sum of three or more gradients depends on DDP's bucket layout, which must not change at resume
    base = SPEC.format(name="exact", n=2400 if ranks == 2 else 1280, size=32 if ranks == 2 else 16, epochs=2)
    spec = write_spec(workdir, base.replace("nproc_per_node: 2", f"nproc_per_node: {ranks}") + """
sweep:
  zip:
    description: [uninterrupted, interrupted]
""")
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    task = sweep.task(1)
    wait_for(lambda: any(task.checkpoints.glob("ckpt-*.json")) if task.checkpoints.exists() else False,
             240, "the first periodic checkpoint of task 1")
    os.killpg(task.state()["trainer_pgid"], signal.SIGTERM)  # what a preemption or scontrol requeue sends
    wait_for(lambda: task.state().get("state") == "PREEMPTED", 120, "task 1 to checkpoint and stop")
    stopped = json.loads((task.path / "stopped.json").read_text())
    assert stopped["signal"] == "SIGTERM" and stopped["global_step"] >= 5
    wait_for(lambda: sweep.task(0).state().get("state") == "COMPLETED", 240, "task 0 to finish")

    resumed = hpcvit("resume", "--wait", cwd=workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"epoch {stopped['epoch']} step {stopped['step_in_epoch']}/" in start_lines(task.log)[1]
    a, b = final_weights(sweep, 0), final_weights(sweep, 1)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    assert checkpoint_differences(sweep, sweep, 0, 1) == [], "every tensor and generator state of every rank too"
    runs = {r.data.tags["hpcvit.task_index"]: r for r in children(sweep)}
    assert len(runs) == 2
    assert runs["0"].data.metrics["val_loss"] == runs["1"].data.metrics["val_loss"]
    assert steps(sweep, runs["1"].info.run_id, "val_loss") == [0, 1]
    # The interrupted epoch's training loss covers the whole epoch (its partial sums travel in the checkpoint).
    client = MlflowClient(sweep.manifest["tracking_uri"])
    losses = [[m.value for m in sorted(client.get_metric_history(runs[i].info.run_id, "train_loss"),
                                       key=lambda m: m.step)] for i in ("0", "1")]
    assert losses[0] == losses[1], losses


def test_cancel_checkpoints_and_resume_continues(workdir: Path) -> None:
    spec = write_spec(workdir, SPEC.format(name="cancel", n=1600, size=16, epochs=30))
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    task = sweep.task(0)
    wait_for(lambda: task.progress().get("epoch", 0) >= 1, 240, "the first epoch")
    cancelled = hpcvit("cancel", sweep.sweep_id, cwd=workdir)
    assert cancelled.returncode == 0 and "cancelled 1 task(s)" in cancelled.stdout
    wait_for(lambda: task.state().get("state") == "CANCELLED", 120, "the task to stop")
    run = children(sweep)[0]
    # the same story in status, state.json, progress.json and MLflow
    assert run.info.status == "KILLED" and run.data.tags["hpcvit.state"] == "CANCELLED"
    assert task.progress().get("state") == "CANCELLED"
    shown = json.loads(hpcvit("status", sweep.sweep_id, "--format", "json", cwd=workdir, check=True).stdout)
    assert shown[0]["state"] == "CANCELLED"
    assert parent_run(sweep).info.status == "KILLED", "a cancelled sweep's run reads as its cancelled task's, not FAILED"
    logs = hpcvit("logs", sweep.sweep_id, "0", cwd=workdir)
    assert logs.returncode == 0 and "stopped by SIGTERM" in logs.stdout
    assert hpcvit("resume", "--wait", cwd=workdir).returncode == 0
    # --wait returns once the trainer wrote its result; the launcher records COMPLETED a moment later.
    wait_for(lambda: task.state().get("state") == "COMPLETED", 60, "the launcher to record COMPLETED")
    assert " start: epoch 0 step 0/" not in start_lines(task.log)[-1]
    assert [r.info.status for r in children(sweep)] == ["FINISHED"]
    hpcvit("status", sweep.sweep_id, cwd=workdir, check=True)
    assert parent_run(sweep).info.status == "FINISHED"


def test_a_pending_task_cancelled_reads_cancelled_at_every_moment(workdir: Path) -> None:
    """One slot, two tasks: the second waits for the slot. Cancelled while it waits, it never starts training and
    never reads LOST; status, state.json and resume agree that it was cancelled."""
    import time

    spec = write_spec(workdir, SPEC.format(name="waiting", n=1600, size=16, epochs=30).replace(
        "array_parallelism: 2", "array_parallelism: 1") + TWO_MODELS)
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")

    def states() -> list[str]:
        return [t["state"] for t in json.loads(hpcvit("status", "--format", "json", cwd=workdir, check=True).stdout)]

    wait_for(lambda: states() == ["RUNNING", "QUEUED"], 240, "task 0 running, task 1 waiting for the slot")
    assert hpcvit("cancel", cwd=workdir).returncode == 0
    seen, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        seen.append(states())
        if seen[-1] == ["CANCELLED", "CANCELLED"]:
            break
    assert seen[-1] == ["CANCELLED", "CANCELLED"], seen
    assert not any("LOST" in sample for sample in seen), f"a cancelled task read LOST: {seen}"
    assert sweep.task(1).state()["state"] == "CANCELLED", "state.json says what status says"
    shown = json.loads(hpcvit("status", "--format", "json", cwd=workdir, check=True).stdout)[1]
    # its launcher saw the marker while it waited, or (the slot freed at that moment) right after it got one
    assert "while waiting for a slot" in shown["message"] or "before its training started" in shown["message"], shown
    assert not sweep.task(1).log.exists() or "=== start" not in sweep.task(1).log.read_text(), "no training started"
    resumed = hpcvit("resume", cwd=workdir)
    assert "resubmitted 2 task(s)" in resumed.stdout, resumed.stdout
    assert hpcvit("cancel", cwd=workdir).returncode == 0


def test_two_concurrent_resumes_submit_once(workdir: Path) -> None:
    spec = write_spec(workdir, SPEC.format(name="race", n=1600, size=16, epochs=40))
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    task = sweep.task(0)
    wait_for(lambda: task.progress().get("epoch", 0) >= 1, 240, "the first epoch")
    kill_tree(task.state()["pid"])
    wait_for(lambda: json.loads(hpcvit("status", "--format", "json", cwd=workdir, check=True).stdout)[0]["state"]
             == "LOST", 30, "status to report the task LOST")
    env = {**os.environ, "COLUMNS": "200"}
    procs = [subprocess.Popen([sys.executable, "-m", "hpcvit.cli", "resume"], cwd=workdir, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum("resubmitted 1 task(s)" in o for o in outs) == 1, outs
    assert sum("nothing to resume" in o for o in outs) == 1, outs
    assert len(sweep.submissions()) == 2  # the first submission and exactly one resume
    wait_for(lambda: task.state().get("state") == "RUNNING", 120, "the resumed task to run")
    hpcvit("cancel", cwd=workdir, check=True)
    wait_for(lambda: task.state().get("state") == "CANCELLED", 120, "the task to stop")
