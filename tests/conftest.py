"""Shared fixtures: every test works in its own directory; CLI runs are real subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import torch
from mlflow.tracking import MlflowClient

from hpcvit.checkpoint import differences, load_weights
from hpcvit.ledger import SweepDir

REPO = Path(__file__).resolve().parents[1]

# A tiny CNN on a synthetic electron/photon-layout set, 2 torchrun ranks, periodic checkpoints.
SPEC = """
name: {name}
data:
  format: synthetic
  synthetic: {{n_samples: {n}, image_size: {size}, channels: 2, seed: 3}}
  val_fraction: 0.25
model:
  name: cnn_small
  kwargs: {{width: 8}}
optim:
  lr: 3e-3
  epochs: {epochs}
  batch_size: 16
  seed: 7
checkpoint:
  every_steps: 5
  every_minutes: null
  keep: 3
resources:
  nproc_per_node: 2
  cpus_per_task: 2
  array_parallelism: 2
"""

# A sweep over two models of different families (kwargs reset so each gets its own defaults).
TWO_MODELS = """
sweep:
  grid:
    model.name: [cnn_small, vit_seed]
    model.kwargs: [{}]
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def write_spec(directory: Path, text: str, name: str = "spec.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def hpcvit(*args: str, cwd: Path, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real ``hpcvit`` command line in ``cwd``."""
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "hpcvit.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"hpcvit {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def signals_in(pid: int, field: str) -> set[int]:
    """The signals in ``/proc/PID/status`` line ``field``: ``SigBlk`` (blocked), ``SigIgn`` (ignored)."""
    mask = next(int(line.split()[1], 16) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith(f"{field}:"))
    return {sig for sig in range(1, 65) if mask >> (sig - 1) & 1}


def process_children() -> dict[int, list[int]]:
    """Every process's children, by the parent's pid (read from ``/proc`` now)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return parents


def kill_tree(root: int) -> None:
    """SIGKILL a process and all its descendants (stopped first, so none can react to the others dying)."""
    parents = process_children()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += parents.get(pid, [])
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def children(sweep: SweepDir) -> list:
    m = sweep.manifest
    client = MlflowClient(m["tracking_uri"])
    return client.search_runs([m["experiment_id"]], f"tags.`mlflow.parentRunId` = '{m['parent_run_id']}'")


def parent_run(sweep: SweepDir):
    """The sweep's own MLflow run, as the tracking store holds it now."""
    return MlflowClient(sweep.manifest["tracking_uri"]).get_run(sweep.manifest["parent_run_id"])


def steps(sweep: SweepDir, run_id: str, key: str) -> list[int]:
    client = MlflowClient(sweep.manifest["tracking_uri"])
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def start_lines(task_log: Path) -> list[str]:
    return [line for line in task_log.read_text().splitlines() if " start: epoch " in line]


def final_weights(sweep: SweepDir, index: int) -> dict[str, torch.Tensor]:
    ckpts = sorted((sweep.task(index).checkpoints).glob("ckpt-*.pt"))
    return torch.load(ckpts[-1], weights_only=False)["model"]


def checkpoint_differences(sweep_a: SweepDir, sweep_b: SweepDir, index: int = 0, index_b: int | None = None
                           ) -> list[str]:
    """Every entry (weights, optimiser, schedule, every generator of every rank, counters) in which the newest
    checkpoints of task ``index`` of ``sweep_a`` and task ``index_b`` (default: the same) of ``sweep_b`` differ."""

    def newest(sweep: SweepDir, i: int) -> object:
        return load_weights(sorted(sweep.task(i).checkpoints.glob("ckpt-*.pt"))[-1])

    return differences(newest(sweep_a, index), newest(sweep_b, index if index_b is None else index_b))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[str]:
    """A real single-node Slurm cluster started by slurm/local-cluster.sh (root only); yields SLURM_CONF."""
    if os.geteuid() != 0 and shutil.which("sbatch") is None:
        pytest.skip("starting the local Slurm cluster needs root (or a running cluster with sbatch on PATH)")
    script = REPO / "slurm" / "local-cluster.sh"
    was_up = subprocess.run([str(script), "status"], capture_output=True).returncode == 0
    proc = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"local-cluster.sh start failed:\n{proc.stderr}"
    conf = proc.stdout.strip().rsplit("=", 1)[1].strip("'\"")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if not was_up:
        subprocess.run([str(script), "stop"], capture_output=True, timeout=120)
