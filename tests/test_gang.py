"""Gang semantics: whichever process of a task dies, no rank trains on, and a task never runs twice."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from hpcvit.fsio import HeldLock
from hpcvit.ledger import find_sweep
from hpcvit.training import loop
from tests.sampler import StateSampler
from tests.conftest import SPEC, children, hpcvit, start_lines, steps, wait_for, write_spec
from tests.test_train_features import make_sweep, tiny

GRACE_S = 5.0
"""Longest that status, state.json and MLflow may disagree during an event. A restart's MLflow word comes from
the launcher right after state.json's, MLflow having been opened before the trainer started (up to
``MARK_READY_WAIT_S``): 0.5 s measured here, 1.5 s with a chaos run beside it."""


def _trainers(task_path: Path) -> list[int]:
    """Pids of the trainer ranks of one task (the processes running ``hpcvit.train <task>``)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"hpcvit.train" in argv and str(task_path).encode() in argv and b"torch.distributed.run" not in argv:
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.mark.slow
def test_killing_the_torchrun_agent_stops_its_ranks_at_a_checkpoint(workdir: Path) -> None:
    spec = write_spec(workdir, SPEC.format(name="agent", n=1600, size=16, epochs=12))
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    task = sweep.task(0)
    wait_for(lambda: task.progress().get("epoch", 0) >= 1, 240, "the task to finish an epoch")
    ranks = _trainers(task.path)
    assert len(ranks) == 2, ranks
    # sampled through the kill, the loss, the resume, the restart and the end: status, state.json and MLflow
    with StateSampler(sweep, grace_s=GRACE_S) as sampler:
        os.kill(task.state()["trainer_pgid"], signal.SIGKILL)  # the agent only: its ranks live in their own sessions
        wait_for(lambda: not _trainers(task.path), 60, "both ranks to exit after their agent died")
        wait_for(lambda: task.state().get("state") == "LOST", 60, "the launcher to record the loss")
        stopped = json.loads((task.path / "stopped.json").read_text())
        assert stopped["signal"] == "SIGTERM", stopped  # what the ranks got from their dying agent
        message = task.state()["message"]  # the real cause, not the ranks' view of it
        assert message.startswith("torchrun's agent was killed (SIGKILL); its ranks saved at epoch"), message
        wait_for(lambda: children(sweep)[0].data.tags["hpcvit.state"] == "LOST", 30, "MLflow to say the same")
        assert children(sweep)[0].info.status == "KILLED"
        status = hpcvit("status", "--format", "json", cwd=workdir)
        assert json.loads(status.stdout)[0]["state"] == "LOST"

        resumed = hpcvit("resume", cwd=workdir)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        wait_for(lambda: task.state().get("state") == "RUNNING", 120, "the restart to run")
        assert task.state().get("message") == "", "a running task does not keep its last stop's message"

        def mlflow_running() -> bool:
            run = children(sweep)[0]
            return run.info.status == "RUNNING" and run.data.tags["hpcvit.state"] == "RUNNING" \
                and run.data.tags["hpcvit.restarts"] == "1"

        wait_for(mlflow_running, 30, "MLflow to follow the restart (the launcher tells it as the trainer starts)")
        wait_for(lambda: task.state().get("state") == "COMPLETED", 400, "the resumed task to finish")
    assert sampler.samples > 20 and not sampler.late, (sampler.longest, sampler.late[:5])
    print(f"states sampled {sampler.samples} times; longest disagreement {sampler.longest:.1f} s")
    hpcvit("status", cwd=workdir, check=True)  # the sweep's summary is made by whoever looks first
    starts = start_lines(task.log)
    assert len(starts) == 2 and f"start: epoch {stopped['epoch']} step {stopped['step_in_epoch']}/" in starts[1]
    (run,) = children(sweep)
    assert run.info.status == "FINISHED" and steps(sweep, run.info.run_id, "val_loss") == list(range(12))


@pytest.mark.slow
def test_killing_the_launcher_stops_torchrun_and_its_ranks(workdir: Path) -> None:
    spec = write_spec(workdir, SPEC.format(name="launcher", n=1600, size=16, epochs=12))
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    task = sweep.task(0)
    wait_for(lambda: task.progress().get("epoch", 0) >= 1, 240, "the task to finish an epoch")
    os.kill(task.state()["pid"], signal.SIGKILL)
    wait_for(lambda: not _trainers(task.path), 60, "the ranks to exit after their launcher died")
    assert (task.path / "stopped.json").exists(), "the ranks saved a checkpoint on their way out"
    state = json.loads(hpcvit("status", "--format", "json", cwd=workdir, check=True).stdout)[0]["state"]
    assert state == "LOST", state  # nobody was left to record the stop
    assert hpcvit("resume", "--wait", cwd=workdir).returncode == 0
    assert len(start_lines(task.log)) == 2
    assert [r.info.status for r in children(sweep)] == ["FINISHED"]


def test_a_second_trainer_of_a_task_refuses_while_the_first_holds_it(workdir: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = make_sweep(workdir, tiny("twice", "", epochs=1), tracking=False)
    task = sweep.task(0)
    held = HeldLock.try_acquire(task.ensure().file(task.RUN_LOCK))
    assert held is not None
    monkeypatch.setattr(loop, "RUN_LOCK_WAIT_S", 1.0)
    with pytest.raises(RuntimeError, match=r"is still being trained by another process .*not starting a second"):
        loop.Trainer(task)
    assert task.trainer_running()
    held.release()
    assert not task.trainer_running()
    trainer = loop.Trainer(task)
    assert task.trainer_running() and trainer.run() == 0
