"""Time from a requeue signal to training running again, on the local Slurm cluster.

Measures, for one hpcvit task (2 torchrun ranks) requeued with ``scontrol requeue`` mid-epoch, ``--repeats``
times: signal -> checkpoint saved -> job left RUNNING -> RUNNING again -> the trainer's first step after the
restart. Baselines in the same run, requeued the same way: a ``sleep`` job (signal -> RUNNING again: what Slurm
itself costs) and a plain PyTorch job (one process training the same model with AdamW in a loop; signal -> its
first step again: what any PyTorch job pays, ``import torch`` and the optimiser's ``torch._dynamo`` import
included). Target: hpcvit's training again within 2x the plain PyTorch job's.

Needs root (it starts slurm/local-cluster.sh) or a running cluster with SLURM_CONF exported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SPEC = """
name: requeue-bench
executor: slurm
data:
  format: synthetic
  synthetic: {n_samples: 12000, image_size: 32, channels: 2, seed: 0}
model: {name: cnn_small, kwargs: {width: 8}}
optim: {epochs: 50, batch_size: 16, lr: 1e-3}
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


PLAIN = """
import os, time, torch
from hpcvit.models.cnn import build_cnn_small
torch.set_num_threads(2)
model = build_cnn_small(2, 32, 1, width=8)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
first = True
while True:
    x, y = torch.randn(16, 2, 32, 32), torch.randint(0, 2, (16, 1)).float()
    torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
    opt.step(); opt.zero_grad()
    if first:
        print("first step", os.environ.get("SLURM_RESTART_COUNT", "0"), flush=True)
        first = False
    time.sleep(0.05)
"""


def lines_with(path: Path, text: str) -> int:
    return sum(text in line for line in path.read_text().splitlines()) if path.exists() else 0


def requeue(job: str, log: Path | None = None, first_step: str = "",
            saved: Path | None = None) -> dict[str, float]:
    """``scontrol requeue`` of a running ``job``; seconds to: ``saved`` written (given), the job's leaving
    RUNNING, RUNNING again and (given a ``log``) its next line holding ``first_step``. All are polled together
    every 50 ms, none read from the log's own whole-second stamps."""
    before = lines_with(log, first_step) if log else 0
    t0 = time.time()
    events: dict[str, Any] = {}
    if saved:
        events["checkpoint saved"] = lambda: saved.exists() and saved.stat().st_mtime > t0
    events["job left RUNNING"] = lambda: squeue_state(job) != "RUNNING"
    events["RUNNING again"] = lambda: "job left RUNNING" in seen and squeue_state(job) == "RUNNING"
    if log:
        events["training again"] = lambda: lines_with(log, first_step) > before
    seen: dict[str, float] = {}
    subprocess.run(["scontrol", "requeue", job], check=True)
    deadline = time.monotonic() + 300
    while len(seen) < len(events):
        if time.monotonic() > deadline:
            raise TimeoutError(f"requeue of job {job}: still waiting for {', '.join(set(events) - set(seen))}")
        for name, happened in events.items():
            if name not in seen and happened():
                seen[name] = time.time() - t0
        time.sleep(0.05)
    return {name: seen[name] for name in events}


def plain_job(workdir: Path, repeats: int) -> tuple[list[float], list[dict[str, float]]]:
    """Baselines: a ``sleep`` job (what Slurm itself costs, to RUNNING again) and a plain PyTorch job (one
    process: the same model, AdamW, steps in a loop; to its first step again), each requeued ``repeats`` times."""
    sleep = subprocess.run(["sbatch", "--parsable", "--requeue", "--cpus-per-task=1", "--mem=200",
                            "--output=/dev/null", "--wrap", "sleep 600"],
                           check=True, capture_output=True, text=True).stdout.strip()
    wait(lambda: squeue_state(sleep) == "RUNNING")
    slept = [requeue(sleep)["RUNNING again"] for _ in range(repeats)]
    subprocess.run(["scancel", sleep], check=True)
    script, log = workdir / "plain.py", workdir / "plain.log"
    script.write_text(PLAIN)
    torch_job = subprocess.run(["sbatch", "--parsable", "--requeue", "--cpus-per-task=2", "--mem=1000",
                                f"--output={log}", "--open-mode=append", f"--chdir={REPO}",
                                "--wrap", f"exec {sys.executable} -u {script}"],
                               check=True, capture_output=True, text=True).stdout.strip()
    wait(lambda: lines_with(log, "first step") >= 1, timeout=300)
    plain = [requeue(torch_job, log, "first step") for _ in range(repeats)]
    subprocess.run(["scancel", torch_job], check=True)
    return slept, plain


def hpcvit_latency(workdir: Path, repeats: int) -> list[dict[str, float]]:
    (workdir / "bench.yaml").write_text(SPEC)
    cli = [sys.executable, "-m", "hpcvit.cli"]
    subprocess.run([*cli, "submit", "bench.yaml"], cwd=workdir, check=True, capture_output=True)
    sweep = next((workdir / "runs").glob("requeue-bench-*"))
    task = sweep / "tasks" / "00000"
    log = task / "train.log"
    job = json.loads((sweep / "submissions.jsonl").read_text().splitlines()[0])["jobs"]["0"]
    out = []
    for _ in range(repeats):
        ckpts = len(list((task / "checkpoints").glob("ckpt-*.json"))) if (task / "checkpoints").exists() else 0
        wait(lambda: len(list((task / "checkpoints").glob("ckpt-*.json"))) > ckpts, timeout=300)
        out.append(requeue(job, log, "first step after", saved=task / "stopped.json"))
    subprocess.run([*cli, "cancel"], cwd=workdir, capture_output=True)
    wait(lambda: squeue_state(job) in ("", "COMPLETED", "CANCELLED"), timeout=120, step=0.5)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if "SLURM_CONF" not in os.environ:
        out = subprocess.run([str(REPO / "slurm" / "local-cluster.sh"), "start"], check=True, capture_output=True,
                             text=True).stdout
        os.environ["SLURM_CONF"] = out.strip().rsplit("=", 1)[1].strip("'\"")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        slept, plain = plain_job(Path(tmp), args.repeats)
        ours = hpcvit_latency(Path(tmp), args.repeats)

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    sleep_s, plain_s, ours_s = statistics.median(slept), med(plain, "training again"), med(ours, "training again")
    print(f"requeue -> ... (medians of {args.repeats})  seconds")
    print(f"{'sleep job RUNNING again':<40}{sleep_s:>7.1f}")
    for key in ("job left RUNNING", "RUNNING again", "training again"):
        print(f"{'plain PyTorch job ' + key:<40}{med(plain, key):>7.1f}")
    for key in ours[0]:
        print(f"{'hpcvit ' + key:<40}{med(ours, key):>7.1f}")
    print(f"hpcvit training again / plain PyTorch job training again: {ours_s / plain_s:.2f} (target <= 2)")
    print(f"hpcvit training again / sleep job RUNNING again: {ours_s / sleep_s:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"sleep_job": slept, "plain_torch_job": plain, "hpcvit": ours,
                                         "ratio_to_plain_torch": ours_s / plain_s,
                                         "ratio_to_sleep": ours_s / sleep_s}, indent=1) + "\n")
    return 0 if ours_s <= 2 * plain_s else 1


if __name__ == "__main__":
    sys.exit(main())
