"""Task states from the ledger and what is alive: the squeue parser, the decision table, real ledger folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpcvit.ledger import SweepDir, create_sweep_dir
from hpcvit.scheduler.procs import process_start_time
from hpcvit.config import JobSpec
from hpcvit.scheduler.slurm import from_slurm, parse_squeue
from hpcvit.states import ACTIVE, RESUMABLE, TERMINAL, TaskState
from hpcvit.scheduler.status import effective_state, task_statuses

S = TaskState


def test_parse_squeue_keeps_only_the_sweeps_jobs() -> None:
    out = "\n".join([
        "4242_0|RUNNING|None", "4242_1|PENDING|Resources", " 4242_7|REQUEUE_HOLD|launch failed requeued held ",
        "999_0|RUNNING|None", "", "garbage line", "4243|COMPLETING|None", "4244_[2-9%4]|PENDING|Priority",
    ])
    states = parse_squeue(out, ["4242_0", "4242_1", "4242_7", "4243", "4244_3"])
    assert {k: v[0] for k, v in states.items()} == {"4242_0": "RUNNING", "4242_1": "PENDING", "4242_7": "REQUEUE_HOLD",
                                                   "4243": "COMPLETING"}
    assert states["4242_7"][1] == "launch failed requeued held" and states["4242_1"][1] == "Resources"
    assert parse_squeue("", ["1_0"]) == {}


def test_slurm_states_map_onto_task_states() -> None:
    assert from_slurm("PENDING") == S.PENDING and from_slurm("REQUEUE_HOLD") == S.HELD
    assert from_slurm("COMPLETING") == S.RUNNING and from_slurm("SUSPENDED") == S.SUSPENDED
    assert from_slurm("SOMETHING_NEW") == S.RUNNING
    assert TERMINAL.isdisjoint(ACTIVE) and S.COMPLETED not in RESUMABLE and S.HELD in ACTIVE


def test_every_hold_reads_held() -> None:
    """Slurm's own holds (a failed launch, ``requeuehold``) as well as ``scontrol hold``'s; waiting is not one."""
    from hpcvit.scheduler.slurm import held

    for reason in ("JobHeldUser", "JobHeldAdmin", "launch failed requeued held", "job requeued in held state"):
        assert held("PENDING", reason), reason
    for reason in ("Resources", "Priority", "BeginTime", "Dependency", "None"):
        assert not held("PENDING", reason), reason
    assert not held("RUNNING", "JobHeldUser")


@pytest.mark.parametrize("recorded,executor,kw,expected", [
    (S.RUNNING, "slurm", {"completed": True}, S.COMPLETED),
    (S.RUNNING, "slurm", {"queue_state": "RUNNING"}, S.RUNNING),
    (S.SUBMITTED, "slurm", {"queue_state": "PENDING"}, S.PENDING),
    (S.PREEMPTED, "slurm", {"queue_state": "PENDING"}, S.REQUEUED),
    (S.PREEMPTED, "slurm", {"queue_state": "RUNNING"}, S.RUNNING),
    (S.PREEMPTED, "slurm", {}, S.CANCELLED),
    (S.PREEMPTED, "slurm", {"stop_cause": "time_limit"}, S.TIMEOUT),
    (S.RUNNING, "slurm", {"queue_state": "REQUEUE_HOLD"}, S.HELD),
    (S.TIMEOUT, "slurm", {}, S.TIMEOUT),
    (S.RUNNING, "slurm", {}, S.LOST),
    (S.SUBMITTED, "slurm", {}, S.LOST),
    (S.FAILED, "slurm", {}, S.FAILED),
    (S.CANCELLED, "slurm", {}, S.CANCELLED),
    (S.RUNNING, "local", {"launcher_alive": True}, S.RUNNING),
    (S.QUEUED, "local", {"launcher_alive": False}, S.LOST),
    (S.SUBMITTED, "local", {"job_alive": True}, S.PENDING),
    (S.SUBMITTED, "local", {}, S.LOST),
    (S.PREEMPTED, "local", {}, S.PREEMPTED),
    (S.NEW, "", {}, S.NEW),
])
def test_effective_state(recorded: TaskState, executor: str, kw: dict, expected: TaskState) -> None:
    assert effective_state(recorded, executor, **{"completed": False, **kw}) == expected


def _sweep(tmp_path: Path, n: int) -> SweepDir:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("name: s\nmodel: {name: cnn_small}\n")
    specs = [JobSpec.model_validate({"name": "s", "model": {"name": "cnn_small"}})] * n
    return create_sweep_dir(tmp_path / "runs", "s-1", spec_file, specs, "local", [f"run {i}" for i in range(n)])


def test_task_statuses_of_a_real_ledger(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, 6)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        sweep.record_submission({0: "100_0", 1: "100_1", 2: "100_2"}, "slurm")
        sweep.record_submission({3: str(alive.pid), 4: str(dead.pid)}, "local")
        sweep.task(0).write_state(state=S.RUNNING, restarts=2)
        sweep.task(1).write_state(state=S.RUNNING)
        sweep.task(2).ensure().write_result({"metric": "val_roc_auc"})
        sweep.task(3).write_state(state=S.RUNNING, pid=alive.pid, pid_start=process_start_time(alive.pid))
        sweep.task(4).write_state(state=S.RUNNING, pid=dead.pid, pid_start=12345)
        sweep.task(0).write_progress({"epoch": 3, "epochs": 5, "metric": "val_roc_auc", "best_metric": 0.9})
        got = task_statuses(sweep, queue={"100_0": ("RUNNING", "None")})
    finally:
        alive.kill()
        alive.wait()
    assert [s.state for s in got] == [S.RUNNING, S.LOST, S.COMPLETED, S.RUNNING, S.LOST, S.NEW]
    first = got[0]
    assert (first.restarts, first.epoch, first.epochs, first.best_metric, first.label) == (2, 3, 5, 0.9, "run 0")
    assert got[4].executor == "local" and got[5].job_id == ""


def test_a_job_cancelled_before_its_trainer_started_reads_cancelled_not_lost(tmp_path: Path) -> None:
    """scancel of a pending array task: the job leaves the queue with its record still SUBMITTED."""
    sweep = _sweep(tmp_path, 3)
    sweep.record_submission({0: "9_0", 1: "9_1", 2: "9_2"}, "slurm")
    for i in (0, 1):
        sweep.task(i).ensure()
    sweep.task(0).request_cancel()
    got = task_statuses(sweep, queue={"9_2": ("PENDING", "Priority")})
    assert [s.state for s in got] == [S.CANCELLED, S.LOST, S.PENDING], "only the cancelled one is CANCELLED"
    assert "before its training started" in got[0].message


def test_a_damaged_ledger_file_is_named_and_does_not_hide_the_other_tasks(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, 3)
    sweep.record_submission({0: "7_0", 1: "7_1", 2: "7_2"}, "slurm")
    sweep.task(0).write_state(state=S.RUNNING)
    sweep.task(1).ensure()
    (sweep.task(1).path / "state.json").write_text('{"state": "RUNN')
    sweep.task(2).write_state(state="BOGUS")
    got = task_statuses(sweep, queue={"7_0": ("PENDING", "Priority")})
    assert [s.state for s in got] == [S.PENDING, S.LOST, S.LOST]
    assert "tasks/00001/state.json: damaged JSON" in got[1].message
    assert "unknown state 'BOGUS'" in got[2].message


def test_a_torn_last_submission_line_is_skipped_but_a_torn_middle_one_is_named(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path, 2)
    sweep.record_submission({0: "5_0"}, "slurm")
    path = sweep.root / "submissions.jsonl"
    with open(path, "a") as f:
        f.write('{"time": "x", "jobs": {"1": "6')
    assert sweep.latest_jobs() == {0: ("5_0", "slurm")}
    path.write_text(path.read_text() + "\n" + json.dumps({"executor": "slurm", "jobs": {"1": "8_0"}}) + "\n")
    with pytest.raises(ValueError, match=r"submissions\.jsonl: line 2"):
        sweep.latest_jobs()
