"""Non-finite training is stopped before it is checkpointed or evaluated, or its steps are skipped."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from hpcvit.training.guard import NonFiniteError
from hpcvit.training.loop import Trainer
from tests.test_train_features import make_sweep, tiny


def _all_checkpoints_finite(task_dir: Path) -> int:
    files = sorted(task_dir.glob("ckpt-*.pt")) + sorted(task_dir.glob("best.pt"))
    for path in files:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key, value in state["model"].items():
            assert torch.isfinite(value).all(), f"{path.name}: {key} is not finite"
    return len(files)


def test_a_diverging_run_fails_naming_the_step_and_keeps_only_finite_checkpoints(workdir: Path) -> None:
    sweep = make_sweep(workdir, tiny("diverge", "grad_clip: null\noptimizer: sgd\nmomentum: 0.0", lr=1e6,
                                     every=1, epochs=2), tracking=False)
    trainer = Trainer(sweep.task(0))
    with pytest.raises(NonFiniteError, match=r"non-finite (loss or gradient in epoch 0, optimiser steps (\d+)-\2 |"
                                             r"weights after optimiser step \d+ \(epoch 0\))"):
        trainer.run()
    assert trainer.global_step < trainer.steps_per_epoch, "stopped inside the first epoch, not after it"
    saved = _all_checkpoints_finite(sweep.task(0).checkpoints)
    assert saved < trainer.global_step + 1


def _spiky_hdf5(path: Path, n: int = 400, spikes: tuple[int, ...] = (5, 77, 201)) -> Path:
    rng = np.random.default_rng(0)
    y = (np.arange(n) % 2).astype(np.float32)
    x = rng.normal(0, 1, size=(n, 16, 16, 2)).astype(np.float32) + y[:, None, None, None]
    for i in spikes:
        x[i, 3, 3, 0] = 3e38  # a corrupt pixel: overflows the first layer
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=x)
        f.create_dataset("y", data=y)
    return path


RAW = """
data:
  format: hdf5
  paths: [{path}]
  val_fraction: 0.25
  preprocessing: {{zero_suppress: null, zscore: false, clip_sigma: null, minmax: false}}
"""


def test_skip_batch_drops_the_steps_of_corrupt_batches_and_trains_on(workdir: Path) -> None:
    path = _spiky_hdf5(workdir / "spiky.h5")
    text = tiny("skip", "nonfinite: skip_batch\ngrad_clip: null", model="vit_seed",
                kwargs="{dim: 16, depth: 1, heads: 2}", every=1000, epochs=1)
    text = text.replace("data:\n  format: synthetic\n  synthetic: {n_samples: 400, image_size: 16, channels: 2, "
                        "seed: 3}\n  val_fraction: 0.25\n", RAW.format(path=path).lstrip())
    sweep = make_sweep(workdir, text, tracking=False)
    trainer = Trainer(sweep.task(0))
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    metrics = trainer.train_epoch()
    assert metrics is not None
    in_train = [i for i in (5, 77, 201) if i in set(trainer.data.train.rows.tolist())]
    assert 1 <= metrics["skipped_steps"] <= len(in_train), metrics
    assert np.isfinite(metrics["train_loss"])
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert any(not torch.equal(start[k], v) for k, v in trainer.model.state_dict().items()), "it trained"

    stopping = make_sweep(workdir, text.replace("nonfinite: skip_batch", "nonfinite: stop")
                          .replace("name: skip", "name: stop"), tracking=False)
    with pytest.raises(NonFiniteError):
        Trainer(stopping.task(0)).train_epoch()
