"""Fingerprints of fixed 3-epoch trainings: every tensor of the last checkpoint, the predictions, the metrics.

Run it before and after a change to the training loop or an objective on the same machine: equal hashes mean
the change left the numbers bitwise as they were. (CPU kernels differ between machines: compare only runs of
the same machine and library versions.)

    python benchmarks/train_hashes.py [--out hashes.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcvit.orchestrate import create_sweep  # noqa: E402
from hpcvit.sweep import load_sweep  # noqa: E402
from hpcvit.training.loop import Trainer  # noqa: E402

COMMON = """
optim: {{lr: 3e-3, epochs: 3, batch_size: 32, seed: 5, {optim}}}
checkpoint: {{every_minutes: null}}
resources: {{nproc_per_node: 1, cpus_per_task: 2}}
model: {{name: cnn_small, kwargs: {{width: 8}}}}
"""

CASES = {
    "binary": """
name: hash-binary
data:
  format: synthetic
  synthetic: {n_samples: 600, image_size: 16, channels: 2, seed: 1}
  val_fraction: 0.2
  test_fraction: 0.2
""" + COMMON.format(optim="label_smoothing: 0.1"),
    "binary_ema_accum": """
name: hash-binary-ema
data:
  format: synthetic
  synthetic: {n_samples: 600, image_size: 16, channels: 2, seed: 2}
  val_fraction: 0.25
""" + COMMON.format(optim="ema_decay: 0.9, grad_accum_steps: 2"),
    "regression": """
name: hash-regression
data:
  format: hdf5
  paths: [{blobs}]
  task: regression
  target_key: m
  val_fraction: 0.2
  test_fraction: 0.2
""" + COMMON.format(optim="schedule: exponential, gamma: 0.8"),
}


def _blobs(path: Path, n: int = 600) -> Path:
    rng = np.random.default_rng(0)
    width = rng.uniform(1.0, 4.0, n)
    grid = np.arange(16) - 7.5
    r2 = grid[None, :, None] ** 2 + grid[None, None, :] ** 2
    x = np.exp(-r2 / (2 * width[:, None, None] ** 2)) * rng.uniform(0.5, 2.0, (n, 1, 1))
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=x[..., None].astype(np.float32))
        f.create_dataset("m", data=85.0 + 415.0 * (width - 1.0) / 3.0)
    return path


def _tensors(value, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, torch.Tensor):
        out[prefix] = hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            _tensors(value[k], f"{prefix}.{k}", out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _tensors(v, f"{prefix}[{i}]", out)


def fingerprint(name: str, text: str, root: Path) -> dict[str, object]:
    spec = root / f"{name}.yaml"
    spec.write_text(textwrap.dedent(text).replace("{blobs}", str(_blobs(root / "blobs.h5"))))
    sweep = create_sweep(load_sweep(spec), root / "runs", submit=False, tracking=False)
    assert Trainer(sweep.task(0)).run() == 0
    task = sweep.task(0)
    last = max(task.checkpoints.glob("ckpt-*.pt"))
    state = torch.load(last, map_location="cpu", weights_only=True)
    tensors: dict[str, str] = {}
    for key in ("model", "optimizer", "ema"):
        _tensors(state.get(key), key, tensors)
    with np.load(task.file(task.PREDICTIONS)) as p:
        preds = {k: hashlib.sha256(p[k].tobytes()).hexdigest()[:16] for k in sorted(p.files)}
    result = task.result()
    all_tensors = hashlib.sha256(json.dumps(tensors, sort_keys=True).encode()).hexdigest()[:16]
    return {"tensors": all_tensors, "n_tensors": len(tensors), "predictions": preds,
            "best_metric": repr(result["best_metric"]), "best_epoch": result["best_epoch"],
            "final": {k: repr(v) for k, v in sorted(result["final"].items())},
            "data_stats": repr(state.get("data_stats")), "target_scale": repr(state.get("target_scale"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            for name, text in CASES.items():
                root = Path(tmp) / name
                root.mkdir()
                out[name] = fingerprint(name, text, root)
        finally:
            os.chdir(cwd)
    text = json.dumps(out, indent=1, sort_keys=True)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
