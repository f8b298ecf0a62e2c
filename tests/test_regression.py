"""Mass regression trains on a standardised target and reports MAE/MRE in the target's units."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from hpcvit.objectives.regression import RegressionObjective
from hpcvit.training.loop import Trainer
from tests.test_train_features import make_sweep

SPEC = """
name: {name}
data:
  format: hdf5
  paths: [{path}]
  task: regression
  target_key: m
  val_fraction: 0.25
model:
  name: cnn_small
  kwargs: {{width: 16, dropout: 0.0}}
optim:
  lr: 3e-3
  epochs: {epochs}
  batch_size: 32
  seed: 1
  schedule: exponential
  gamma: 0.8
checkpoint: {{every_minutes: null, best_metric: {best}}}
resources: {{nproc_per_node: 1, cpus_per_task: 2}}
"""


def _blobs(path: Path, n: int = 800, seed: int = 0) -> Path:
    """Gaussian blobs whose width sets the target (m from 85 to 500, the seed's mass range in GeV)."""
    rng = np.random.default_rng(seed)
    width = rng.uniform(1.0, 4.0, n)
    grid = np.arange(16) - 7.5
    r2 = grid[None, :, None] ** 2 + grid[None, None, :] ** 2
    x = np.exp(-r2 / (2 * width[:, None, None] ** 2)) * rng.uniform(0.5, 2.0, (n, 1, 1))
    x += rng.normal(0, 0.02, x.shape)
    m = 85.0 + 415.0 * (width - 1.0) / 3.0
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=x[..., None].astype(np.float32))
        f.create_dataset("m", data=m)
    return path


def test_a_small_model_beats_the_mean_predictor_in_target_units(workdir: Path) -> None:
    path = _blobs(workdir / "blobs.h5")
    sweep = make_sweep(workdir, SPEC.format(name="mass", path=path, epochs=4, best="val_mre"))
    trainer = Trainer(sweep.task(0))
    scale = trainer.objective.scale
    train_y = trainer.data.train.targets
    assert scale.mean == np.float64(train_y.astype(np.float64).mean())
    assert 100 < scale.std < 150, scale
    assert trainer.metric_name == "val_mre" and trainer.metric_mode == "min"
    assert trainer.run() == 0
    result = sweep.task(0).result()
    preds = np.load(sweep.task(0).file("predictions.npz"))
    val_y, val_out = preds["val_y"], preds["val_out"]
    mean_mae = float(np.mean(np.abs(val_y - train_y.mean())))
    model_mae = float(np.mean(np.abs(val_y - val_out)))
    assert 85 <= val_out.mean() <= 500, "predictions are in the target's units"
    assert model_mae < 0.5 * mean_mae, (model_mae, mean_mae)
    assert result["metric"] == "val_mre" and result["best_metric"] < 0.2
    from hpcvit.results.compare import compare_rows, plot_overlay

    result = compare_rows(sweep)
    assert result.metric == "val_mre", "compare ranks by the spec's checkpoint.best_metric"
    headers = [c.header for c in result.columns]
    assert "val mre" in headers and "val MAE" in headers and "val res68" in headers, headers
    assert not any("1/eB" in h for h in headers), "no binary columns for a regression"
    assert result.rows[0]["val_resolution"] > 0
    assert compare_rows(sweep, "test_mre").metric == "test_mre"
    with pytest.raises(ValueError, match="--metric val_roc_auc: not a metric of this regression sweep"):
        compare_rows(sweep, "val_roc_auc")

    png = plot_overlay(sweep, workdir / "residuals.png")
    assert png.stat().st_size > 10_000 and png.with_suffix(".pdf").exists(), "a regression's figure: residuals"

    saved = torch.load(max(sweep.task(0).checkpoints.glob("ckpt-*.pt")), weights_only=True)
    assert saved["target_scale"] == scale.to_dict(), "the target statistics travel with the checkpoint"
    spec = sweep.task(0).spec()
    again = RegressionObjective(spec, sweep.root)
    again.build_data({"target_scale": saved["target_scale"]})
    assert again.scale == scale, "a resumed task takes the scale from its checkpoint"
