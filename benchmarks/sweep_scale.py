"""Validate and dry-run a 5,000-run sweep (target under 2 s each), and `status` of a 5,000-task sweep (target
under 1 s), end to end, process start included.

Baseline in the same run: `hpcvit --help` (interpreter start and CLI import), so the ratio shows what the
sweep itself costs on this machine. The status sweep is a real ledger written by the library (5,000 task
folders with state.json and progress.json, their jobs on the local executor and long gone: no squeue call).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """
name: scale
model: {name: cnn_small}
executor: slurm
resources: {array_parallelism: 64}
sweep:
  grid:
    model.name: [cnn_small, vit_seed, coatnet_0, swin_tiny, resnet15]
    optim.lr: [1e-3, 5e-4, 3e-4, 2e-4, 1e-4, 5e-5, 3e-5, 2e-5, 1e-5, 5e-6]
    optim.seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    optim.weight_decay: [0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
"""


def timed(*args: str, cwd: Path) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hpcvit.cli", *args], cwd=cwd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def ledger(cwd: Path) -> Path:
    """A 5,000-task sweep folder as the library writes it, every task stopped at a checkpoint."""
    from hpcvit.ledger import create_sweep_dir
    from hpcvit.states import TaskState
    from hpcvit.sweep import load_sweep

    sweep = load_sweep(cwd / "scale.yaml")
    specs = [r.spec.model_copy(update={"executor": "local"}) for r in sweep.runs]
    sweep_dir = create_sweep_dir(cwd / "runs", "scale-status", cwd / "scale.yaml", specs, "local",
                                 [r.label for r in sweep.runs])
    sweep_dir.record_submission({i: str(4_000_000 + i) for i in range(len(specs))}, "local")
    for task in sweep_dir.tasks():
        task.write_state(state=TaskState.PREEMPTED, message="stopped by SIGTERM at epoch 3 step 7", restarts=1)
        task.write_progress({"epoch": 3, "epochs": 10, "metric": "val_roc_auc", "best_metric": 0.9})
    return sweep_dir.root


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "scale.yaml").write_text(SPEC)
        base = timed("--help", cwd=cwd)
        validate = timed("validate", "scale.yaml", cwd=cwd)
        dry = timed("submit", "scale.yaml", "--dry-run", cwd=cwd)
        root = ledger(cwd)
        status = timed("status", str(root), "--format", "json", cwd=cwd)
    print(f"{'step':<28}{'seconds':>10}{'x baseline':>12}")
    for name, value in (("hpcvit --help (baseline)", base), ("validate 5,000 runs", validate),
                        ("submit --dry-run 5,000 runs", dry), ("status 5,000 tasks", status)):
        print(f"{name:<28}{value:>10.3f}{value / base:>12.1f}")
    ok = validate < 2.0 and dry < 2.0 and status < 1.0
    print("targets (< 2 s validate and dry-run, < 1 s status):", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
