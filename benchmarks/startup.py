"""Time from a trainer's process start to its first training step, resuming from a checkpoint, by phase.

A real sweep folder (synthetic electron/photon-layout data, a real MLflow store) holds one task of a small
model; a first trainer is stopped by SIGTERM after its first checkpoint. Then, ``--repeats`` times, the
trainer is started the way the launcher starts it (``hpcvit.scheduler.launch.trainer_command``: one rank on one node
runs without torchrun) and stopped again after its first step; the trainer logs its phases (process start ->
``python`` -> ``torch`` import -> ``hpcvit`` imports -> ``process group`` -> ``checkpoint read`` -> ``data`` ->
``model`` -> ``restore`` -> ``first step``). For comparison the same start through torchrun
(``torchrun_command``), and two baselines measured in the same run, each timed to a line it prints: ``import
torch``, and a plain PyTorch process that builds the same model and ``AdamW``, reads a checkpoint of them and
takes one step on a batch of the same shape. The second is what any PyTorch training start pays: the torch
installed here imports ``torch._dynamo`` (about a second) when an optimiser is made (``add_param_group``; its
``step`` needs it too), which ``import torch`` alone does not.

Target: first step <= 5 s after the process started (1 rank, small model, checkpoint present).

Usage: python benchmarks/startup.py [--model cnn_small] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_S = 5.0
SPEC = """
name: startup-bench
data:
  format: synthetic
  synthetic: {{n_samples: 4000, image_size: 32, channels: 2, seed: 0}}
model: {{name: {model}}}
optim: {{epochs: 50, batch_size: 32, lr: 1e-3}}
checkpoint: {{every_steps: 5, every_minutes: null}}
resources: {{nproc_per_node: 1, cpus_per_task: 2}}
"""
_FIRST = re.compile(r"first step after ([\d.]+) s \((.*)\)")


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _first_steps(log: Path) -> list[re.Match[str]]:
    return [m for line in log.read_text().splitlines() if (m := _FIRST.search(line))] if log.exists() else []


def start_once(task: Any, cmd: list[str], env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Start ``cmd``, wait for its first step, stop it with SIGTERM (it checkpoints); (seconds from the start
    of ``cmd`` to the first step, phases; ``launch``: before the trainer's own process started)."""
    before = len(_first_steps(task.log))
    t0 = time.time()
    with open(task.log, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait(lambda: len(_first_steps(task.log)) > before or proc.poll() is not None, 300, "the first step")
        seen = time.time()
        found = _first_steps(task.log)
        if len(found) <= before:
            raise RuntimeError(f"the trainer exited with {proc.returncode} before a step (log: {task.log})")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    m = found[-1]
    trainer = {name: float(s) for name, s in (p.rsplit(" ", 1) for p in m.group(2).split(", "))}
    wall = seen - t0
    return wall, {"launch": max(wall - float(m.group(1)), 0.0), **trainer}


def _seconds_to_line(args: list[str], line: str) -> float:
    """Seconds from starting ``python args`` to its printing ``line`` (not to its exit: as the trainer's start
    is timed to its first step's log line)."""
    t = time.perf_counter()
    with subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != line:
            raise RuntimeError(f"python {args[0]} ... did not print {line!r}")
        took = time.perf_counter() - t
    return took


def import_torch_s() -> float:
    return _seconds_to_line(["-c", "import torch; print('imported', flush=True)"], "imported")


PLAIN = """
import sys, torch
from hpcvit.models import build_model
torch.set_num_threads(2)
model = build_model(sys.argv[2], 2, 32, 1)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
path = sys.argv[1]
try:
    saved = torch.load(path, weights_only=True)
    model.load_state_dict(saved["model"]); opt.load_state_dict(saved["optimizer"])
except FileNotFoundError:
    pass
x, y = torch.randn(32, 2, 32, 32), torch.randint(0, 2, (32, 1)).float()
torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
opt.step()
print("first step", flush=True)
torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
"""


def plain_torch_s(ckpt: Path, model: str) -> float:
    """A plain PyTorch process: model, AdamW, its checkpoint read, one step; seconds to that step."""
    return _seconds_to_line(["-c", PLAIN, str(ckpt), model], "first step")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn_small")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from hpcvit.scheduler.jobenv import RESTARTS_VAR, JobEnv
    from hpcvit.scheduler.launch import torchrun_command, trainer_command
    from hpcvit.orchestrate import create_sweep
    from hpcvit.sweep import load_sweep

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "spec.yaml").write_text(SPEC.format(model=args.model))
        sweep = create_sweep(load_sweep(root / "spec.yaml"), root / "runs", submit=False)
        task = sweep.task(0).ensure()
        env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
        env.update(OMP_NUM_THREADS="2", **{RESTARTS_VAR: "1"})
        direct, rank_env = trainer_command(task, 1, 1, JobEnv.read(env))
        start_once(task, direct, {**env, **rank_env})  # leaves a checkpoint: every later start resumes from it
        if not any(task.checkpoints.glob("ckpt-*.json")):
            raise RuntimeError("the first trainer left no checkpoint")
        torchrun = torchrun_command(task, 1, 1, JobEnv.read(env))
        rows: dict[str, list[tuple[float, dict[str, float]]]] = {"direct": [], "torchrun": []}
        baseline, plain = [], []
        plain_torch_s(root / "plain.pt", args.model)  # leaves the checkpoint every later start reads
        for _ in range(args.repeats):
            baseline.append(import_torch_s())
            plain.append(plain_torch_s(root / "plain.pt", args.model))
            rows["direct"].append(start_once(task, direct, {**env, **rank_env}))
            rows["torchrun"].append(start_once(task, torchrun, env))
    base, plain_s = statistics.median(baseline), statistics.median(plain)
    result: dict[str, Any] = {"model": args.model, "import_torch_s": base, "plain_torch_first_step_s": plain_s,
                              "target_s": TARGET_S}
    print(f"{args.model}, 1 rank, checkpoint present; medians of {args.repeats} starts")
    label = 'python -c "import torch" (baseline)'
    print(f"{label:<40}{base:>7.2f} s")
    label = "plain PyTorch first step (baseline)"
    print(f"{label:<40}{plain_s:>7.2f} s  ({plain_s / base:.2f} x import torch)")
    for how, runs in rows.items():
        total = statistics.median(t for t, _ in runs)
        phases = {name: statistics.median(p[name] for _, p in runs) for name in runs[0][1]}
        result[how] = {"first_step_s": total, "ratio_to_import_torch": total / base,
                       "ratio_to_plain_torch": total / plain_s, "phases_s": phases}
        label = "launcher -> trainer (1 rank: no torchrun)" if how == "direct" else "launcher -> torchrun -> trainer"
        print(f"{label:<40}{total:>7.2f} s  ({total / base:.2f} x import torch, {total / plain_s:.2f} x plain)")
        print("    " + ", ".join(f"{name} {s:.2f}" for name, s in phases.items()))
    ok = result["direct"]["first_step_s"] <= TARGET_S
    print(f"target: first step <= {TARGET_S:.0f} s after the trainer's process started: {'PASS' if ok else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
