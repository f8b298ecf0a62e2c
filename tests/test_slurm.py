"""The Slurm path against a real local cluster (slurm/local-cluster.sh): arrays, requeue, preemption,
time limits, SIGKILL and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpcvit.ledger import SweepDir, find_sweep
from tests.conftest import (SPEC, checkpoint_differences, children, final_weights, hpcvit, kill_tree, start_lines, steps, wait_for,
                            write_spec)

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

SLURM = "executor: slurm\n"


def slurm_spec(workdir: Path, name: str, n: int = 2400, epochs: int = 2, extra: str = "", cpus: int = 1,
               file: str = "spec.yaml") -> Path:
    text = SPEC.format(name=name, n=n, size=32, epochs=epochs).replace("cpus_per_task: 2", f"cpus_per_task: {cpus}")
    return write_spec(workdir, text + SLURM + extra, file)


def queue_state(job: str) -> str:
    out = subprocess.run(["squeue", "--noheader", "--array", "--format=%T", f"--jobs={job}"],
                         capture_output=True, text=True).stdout.strip()
    return out


def test_three_task_array_completes(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    spec = slurm_spec(workdir, "array3", n=480, epochs=1, extra="""
sweep:
  grid:
    optim.lr: [1e-3, 2e-3, 3e-3]
""")
    proc = hpcvit("submit", str(spec), "--wait", cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = find_sweep(None, workdir / "runs")
    jobs = sweep.latest_jobs()
    array_ids = {job.split("_")[0] for job, _ in jobs.values()}
    assert len(array_ids) == 1, f"one array job expected, got {jobs}"
    assert sorted(job.split("_")[1] for job, _ in jobs.values()) == ["0", "1", "2"]
    runs = children(sweep)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["hpcvit.slurm_job_id"] for r in runs} == array_ids

    # status reads every task's Slurm state with ONE squeue call: count the calls of the real squeue.
    shim = tmp_path_factory.mktemp("shim")
    calls = shim / "calls"
    real = subprocess.run(["bash", "-c", "command -v squeue"], capture_output=True, text=True).stdout.strip()
    (shim / "squeue").write_text(f'#!/bin/sh\necho x >> "{calls}"\nexec "{real}" "$@"\n')
    (shim / "squeue").chmod(0o755)
    env_path = f"{shim}:{os.environ['PATH']}"
    status = subprocess.run([sys.executable, "-m", "hpcvit.cli", "status", "--format", "json"], cwd=workdir,
                            capture_output=True, text=True, env={**os.environ, "PATH": env_path})
    assert status.returncode == 0, status.stderr
    assert [t["state"] for t in json.loads(status.stdout)] == ["COMPLETED"] * 3
    assert calls.read_text().count("x") == 1


def assert_matches_uninterrupted(workdir: Path, spec: Path, sweep: SweepDir) -> None:
    """Run the same spec uninterrupted on the local executor; the interrupted task's weights must be identical."""
    reference_dir = workdir / "reference"
    proc = hpcvit("submit", str(spec), "--executor", "local", "--wait", "--output-dir", str(reference_dir),
                  cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reference = find_sweep(None, reference_dir)
    assert len(start_lines(reference.task(0).log)) == 1  # the reference ran without a restart
    a, b = final_weights(sweep, 0), final_weights(reference, 0)
    assert all(torch.equal(a[k], b[k]) for k in a), "the interrupted task diverged from an uninterrupted run"
    assert checkpoint_differences(sweep, reference) == [], "every tensor and generator state of every rank too"


def _wait_first_checkpoint(sweep: SweepDir, index: int) -> None:
    ckpts = sweep.task(index).checkpoints
    wait_for(lambda: ckpts.exists() and any(ckpts.glob("ckpt-*.json")), 300, f"a checkpoint of task {index}")


def test_scontrol_requeue_resumes_exactly(workdir: Path) -> None:
    spec = slurm_spec(workdir, "requeue", extra="""
sweep:
  zip:
    description: [uninterrupted, requeued]
""")
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    _wait_first_checkpoint(sweep, 1)
    job = sweep.latest_jobs()[1][0]
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_for(lambda: all(sweep.task(i).state().get("state") == "COMPLETED" for i in (0, 1)), 600,
             "both tasks to complete")
    task = sweep.task(1)
    assert task.state()["restarts"] >= 1  # SLURM_RESTART_COUNT
    stopped_starts = start_lines(task.log)
    assert len(stopped_starts) >= 2 and " start: epoch 0 step 0/" not in stopped_starts[-1]
    a, b = final_weights(sweep, 0), final_weights(sweep, 1)
    assert all(torch.equal(a[k], b[k]) for k in a), "requeued task diverged from its twin"
    assert checkpoint_differences(sweep, sweep, 0, 1) == [], "every tensor and generator state of every rank too"
    runs = {r.data.tags["hpcvit.task_index"]: r for r in children(sweep)}
    assert len(runs) == 2
    assert steps(sweep, runs["1"].info.run_id, "val_loss") == [0, 1]
    assert int(runs["1"].data.tags["hpcvit.restarts"]) >= 1


def test_preemption_by_high_priority_partition_resumes(workdir: Path) -> None:
    spec = slurm_spec(workdir, "preempt", cpus=2, epochs=4, extra="""
sweep:
  zip:
    description: [preempted]
""")
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    task = sweep.task(0)
    _wait_first_checkpoint(sweep, 0)
    blocker = subprocess.run(["sbatch", "--parsable", "--partition=high", "--cpus-per-task=2", "--mem=500",
                              "--output=/dev/null", "--wrap", "sleep 3"],
                             check=True, capture_output=True, text=True).stdout.strip()
    wait_for(lambda: (task.path / "stopped.json").exists() or task.state().get("restarts", 0) >= 1, 120,
             "the high-priority job to preempt the task")
    wait_for(lambda: task.state().get("state") == "COMPLETED", 600, "the preempted task to complete")
    assert queue_state(blocker) in ("", "COMPLETED")  # the preemptor ran
    assert task.state()["restarts"] >= 1
    assert "stopped by SIGTERM" in task.log.read_text()
    runs = children(sweep)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert steps(sweep, runs[0].info.run_id, "val_loss") == [0, 1, 2, 3]
    assert_matches_uninterrupted(workdir, spec, sweep)


def test_time_limit_checkpoints_and_requeues(workdir: Path) -> None:
    # 30 epochs of ~2 s against a 1-minute limit warned 20 s early: at least one USR2 mid-training.
    spec = slurm_spec(workdir, "timelimit", n=4800, epochs=30, extra="""
sweep:
  zip:
    description: [limited]
""").read_text().replace("array_parallelism: 2", "array_parallelism: 2\n  time_min: 1\n  signal_delay_s: 20\n"
                                                  "  max_requeues: 20")  # start-up under load eats the window
    path = write_spec(workdir, spec, "timelimit.yaml")
    assert hpcvit("submit", str(path), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    wait_for(lambda: sweep.task(0).state().get("state") == "COMPLETED", 900, "the time-limited task to complete")
    task = sweep.task(0)
    log = task.log.read_text()
    assert "stopped by SIGUSR2" in log, log[-2000:]
    assert task.state()["restarts"] >= 1
    runs = children(sweep)
    assert len(runs) == 1 and steps(sweep, runs[0].info.run_id, "val_loss") == list(range(30))
    # The reference gets a time limit it does not reach (the local executor enforces time_min too).
    reference = write_spec(workdir, spec.replace("time_min: 1\n", "time_min: 30\n"), "reference.yaml")
    assert_matches_uninterrupted(workdir, reference, sweep)


def test_sigkill_and_resume_only_the_failed_task(workdir: Path) -> None:
    spec = slurm_spec(workdir, "partial", n=960, epochs=6, extra="""
sweep:
  zip:
    model.kwargs.dropout: [0.1, 2.0, 0.1]
""")
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    # Task 1 fails by itself (dropout 2.0 is invalid); task 2 is killed with SIGKILL after a checkpoint.
    _wait_first_checkpoint(sweep, 2)
    kill_tree(sweep.task(2).state()["pid"])
    wait_for(lambda: sweep.task(0).state().get("state") == "COMPLETED", 600, "task 0 to complete")
    states = {t["index"]: t["state"] for t in json.loads(hpcvit("status", "--format", "json", cwd=workdir,
                                                                 check=True).stdout)}
    assert states[0] == "COMPLETED" and states[1] == "FAILED" and states[2] == "LOST", states
    before = len(sweep.submissions())
    resumed = hpcvit("resume", cwd=workdir)
    assert resumed.returncode == 0 and "resubmitted 2 task(s)" in resumed.stdout, resumed.stdout
    new = sweep.submissions()[before:]
    assert len(new) == 1 and sorted(new[0]["jobs"]) == ["1", "2"]
    wait_for(lambda: sweep.task(2).state().get("state") == "COMPLETED", 600, "task 2 to complete after resume")
    assert " start: epoch 0 step 0/" not in start_lines(sweep.task(2).log)[-1]
    wait_for(lambda: sweep.task(1).state().get("state") == "FAILED", 300, "task 1 to fail again")
    again = hpcvit("resume", cwd=workdir)
    assert "resubmitted 1 task(s)" in again.stdout and f"{sweep.sweep_id}: 1 as job(s)" in again.stdout, again.stdout


def test_a_sweep_larger_than_an_array_is_split_and_completes(workdir: Path) -> None:
    from hpcvit.scheduler.slurm import config as slurm_config
    from hpcvit.scheduler.slurm import max_array_size
    from hpcvit.sweep import load_sweep

    assert slurm_config().get("MaxArraySize", "").isdigit(), "the cluster's limit is read from scontrol"
    spec = slurm_spec(workdir, "split", n=480, epochs=1, extra="""
sweep:
  grid:
    optim.lr: [1e-3, 2e-3, 3e-3, 4e-3, 5e-3]
""")
    text = spec.read_text().replace("array_parallelism: 2", "array_parallelism: 2\n  max_array_size: 2")
    spec.write_text(text)
    assert max_array_size(load_sweep(spec).base) == 2
    dry = hpcvit("submit", str(spec), "--dry-run", cwd=workdir)
    assert "5 task(s) as 3 Slurm array(s) of at most 2" in dry.stderr  # in a pipe: the scripts alone on stdout
    assert dry.stdout.count("#!/bin/bash") == 3 and dry.stdout.count("#SBATCH --array=0-1%2") == 2
    proc = hpcvit("submit", str(spec), "--wait", cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = find_sweep(None, workdir / "runs")
    records = sweep.submissions()
    assert [sorted(map(int, r["jobs"])) for r in records] == [[0, 1], [2, 3], [4]]
    assert len({job.split("_")[0] for r in records for job in r["jobs"].values()}) == 3
    states = [t["state"] for t in json.loads(hpcvit("status", "--format", "json", cwd=workdir, check=True).stdout)]
    assert states == ["COMPLETED"] * 5
    assert sorted(r.info.status for r in children(sweep)) == ["FINISHED"] * 5


def test_a_refused_submission_leaves_nothing_behind(workdir: Path) -> None:
    from mlflow.tracking import MlflowClient

    spec = slurm_spec(workdir, "refused", n=480, epochs=1)
    spec.write_text(spec.read_text().replace("array_parallelism: 2", "array_parallelism: 2\n  partition: nosuch"))
    proc = hpcvit("submit", str(spec), cwd=workdir)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "nosuch" in proc.stderr or "partition" in proc.stderr.lower(), proc.stderr
    assert not [p for p in (workdir / "runs").iterdir() if (p / "manifest.json").exists()]
    client = MlflowClient(f"sqlite:///{workdir / 'runs' / 'mlflow.db'}")
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_plain_scancel_ends_cancelled_in_status_ledger_and_mlflow(workdir: Path) -> None:
    spec = slurm_spec(workdir, "scancel", n=2400, epochs=20)
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    task = sweep.task(0)
    wait_for(lambda: any(task.checkpoints.glob("ckpt-*.json")) if task.checkpoints.exists() else False, 300,
             "a first checkpoint")
    job = sweep.latest_jobs()[0][0]
    subprocess.run(["scancel", job], check=True)
    wait_for(lambda: queue_state(job) == "", 180, "the job to leave the queue")
    wait_for(lambda: not any(task.checkpoints.glob(".*.tmp")), 30, "the last checkpoint write to end")
    status = json.loads(hpcvit("status", "--format", "json", cwd=workdir, check=True).stdout)[0]
    assert status["state"] == "CANCELLED", status
    assert task.state()["state"] == "CANCELLED"
    (run,) = children(sweep)
    assert run.info.status == "KILLED" and run.data.tags["hpcvit.state"] == "CANCELLED"
    resumed = hpcvit("resume", cwd=workdir)
    assert resumed.returncode == 0 and "resubmitted 1 task(s)" in resumed.stdout
    subprocess.run(["scancel", sweep.latest_jobs()[0][0]], check=False)


def test_a_held_job_shows_held_with_its_reason_and_resume_releases_it(workdir: Path) -> None:
    spec = slurm_spec(workdir, "held", n=480, epochs=1)
    text = spec.read_text().replace("array_parallelism: 2", "array_parallelism: 2\n  sbatch_extra: {begin: now+300}")
    spec.write_text(text)  # it waits five minutes before it may start: time to hold it while pending
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    job = sweep.latest_jobs()[0][0]
    subprocess.run(["scontrol", "hold", job], check=True)
    status = json.loads(hpcvit("status", "--format", "json", cwd=workdir, check=True).stdout)[0]
    assert status["state"] == "HELD" and "JobHeld" in status["message"], status
    resumed = hpcvit("resume", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    wait_for(lambda: sweep.task(0).state().get("state") == "COMPLETED", 300, "the released task to complete")
    assert [s.split("_")[0] for s in (sweep.latest_jobs()[0][0],)] == [job.split("_")[0]], "released, not resubmitted"
