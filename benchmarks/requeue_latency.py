"""Time from a requeue signal to training running again, on the local Slurm cluster.

Measures, for one hpcvit task (2 torchrun ranks) requeued with ``scontrol requeue`` mid-epoch:
signal -> checkpoint saved -> job RUNNING again -> trainer's first step after the restart.
Baseline in the same run: a plain ``sbatch --requeue --wrap 'sleep 300'`` job requeued the same way
(signal -> RUNNING), i.e. what Slurm itself costs; the ratio is hpcvit's total over that.

Needs root (it starts slurm/local-cluster.sh) or a running cluster with SLURM_CONF exported.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = """
name: requeue-bench
executor: slurm
data:
  format: synthetic
  synthetic: {n_samples: 12000, image_size: 32, channels: 2, seed: 0}
model: {name: cnn_small, kwargs: {width: 8}}
optim: {epochs: 3, batch_size: 16, lr: 1e-3}
checkpoint: {every_steps: 50, every_minutes: null}
resources: {nproc_per_node: 2, cpus_per_task: 2, time_min: 30}
"""


def squeue_state(job: str) -> str:
    return subprocess.run(["squeue", "--noheader", "--array", "--format=%T", f"--jobs={job}"],
                          capture_output=True, text=True).stdout.strip()


def wait(condition, timeout: float = 300.0, step: float = 0.05) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.time()
        time.sleep(step)
    raise TimeoutError("condition not met")


def stamp(line: str) -> float:
    return dt.datetime.fromisoformat(line[1:line.index("]")]).timestamp()


def plain_job_latency() -> float:
    job = subprocess.run(["sbatch", "--parsable", "--requeue", "--cpus-per-task=1", "--mem=200", "--output=/dev/null",
                          "--wrap", "sleep 300"],
                         check=True, capture_output=True, text=True).stdout.strip()
    wait(lambda: squeue_state(job) == "RUNNING")
    t0 = time.time()
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait(lambda: squeue_state(job) != "RUNNING")
    t1 = wait(lambda: squeue_state(job) == "RUNNING")
    subprocess.run(["scancel", job], check=True)
    return t1 - t0


def hpcvit_latency(workdir: Path) -> dict[str, float]:
    (workdir / "bench.yaml").write_text(SPEC)
    cli = [sys.executable, "-m", "hpcvit.cli"]
    subprocess.run([*cli, "submit", "bench.yaml"], cwd=workdir, check=True, capture_output=True)
    sweep = next((workdir / "runs").glob("requeue-bench-*"))
    task = sweep / "tasks" / "00000"
    wait(lambda: any((task / "checkpoints").glob("ckpt-*.json")) if (task / "checkpoints").exists() else False)
    job = json.loads((sweep / "submissions.jsonl").read_text().splitlines()[0])["jobs"]["0"]
    t0 = time.time()
    subprocess.run(["scontrol", "requeue", job], check=True)
    saved = wait(lambda: (task / "stopped.json").exists())
    ended = wait(lambda: squeue_state(job) != "RUNNING")
    running = wait(lambda: squeue_state(job) == "RUNNING")

    def restarted() -> bool:
        return sum(" start: epoch " in line for line in (task / "train.log").read_text().splitlines()) >= 2

    wait(restarted, timeout=300, step=0.2)
    start_line = [line for line in (task / "train.log").read_text().splitlines() if " start: epoch " in line][-1]
    first_step = stamp(start_line)
    subprocess.run([*cli, "cancel"], cwd=workdir, capture_output=True)
    wait(lambda: squeue_state(job) in ("", "COMPLETED", "CANCELLED"), timeout=120, step=0.5)
    return {"checkpoint saved": saved - t0, "job left RUNNING": ended - t0, "RUNNING again": running - t0,
            "training again": first_step - t0}


def main() -> int:
    if "SLURM_CONF" not in os.environ:
        out = subprocess.run([str(REPO / "slurm" / "local-cluster.sh"), "start"], check=True, capture_output=True,
                             text=True).stdout
        os.environ["SLURM_CONF"] = out.strip().rsplit("=", 1)[1].strip("'\"")
    baseline = plain_job_latency()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        ours = hpcvit_latency(Path(tmp))
    print(f"{'requeue -> ...':<34}{'seconds':>9}")
    print(f"{'plain sbatch job RUNNING (baseline)':<34}{baseline:>9.1f}")
    for name, value in ours.items():
        print(f"{'hpcvit ' + name:<34}{value:>9.1f}")
    print(f"ratio hpcvit training-again / baseline RUNNING: {ours['training again'] / baseline:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
