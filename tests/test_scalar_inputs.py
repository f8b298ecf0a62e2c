"""``data.scalar_inputs``: per-jet scalars reach the model, standardised with training statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hpcvit.data import build_datasets
from hpcvit.data.parquet import write_jets
from hpcvit.training.loop import Trainer
from tests.test_train_features import make_sweep

SPEC = """
name: scalars
data:
  format: parquet
  paths: [{path}]
  val_fraction: 0.25
  scalar_inputs: {scalars}
  cache_dir: {cache}
model:
  name: cnn_small
  kwargs: {{width: 8}}
optim: {{lr: 3e-3, epochs: 3, batch_size: 32, seed: 2}}
checkpoint: {{every_minutes: null}}
resources: {{nproc_per_node: 1}}
"""


def _jets(path: Path, n: int = 480) -> Path:
    """Images of noise; the class shows only in pT (and m0 is noise): only the scalars can tell."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    return write_jets(path, rng.random((n, 3, 8, 8)), {"y": y, "pt": 400 + 80 * y + rng.normal(0, 20, n),
                                                       "m0": rng.normal(100, 30, n)}, row_group_size=40)


def test_the_class_is_learnt_from_the_scalars_and_their_statistics_travel(workdir: Path) -> None:
    path = _jets(workdir / "jets.parquet")
    results = {}
    for name, scalars in (("with", "[pt, m0]"), ("without", "[]")):
        sweep = make_sweep(workdir, SPEC.format(path=path, scalars=scalars, cache=workdir / "cache")
                           .replace("name: scalars", f"name: {name}"), tracking=False)
        trainer = Trainer(sweep.task(0))
        assert trainer.run() == 0
        results[name] = sweep.task(0).result()["best_metric"]
        if name == "with":
            scale = trainer.data.scalar_scale
            assert 420 < scale.mean[0] < 460 and 20 < scale.mean[1] + 0 < 200
            saved = torch.load(max(sweep.task(0).checkpoints.glob("ckpt-*.pt")), weights_only=True)
            assert saved["scalar_scale"] == scale.to_dict()
            direct = build_datasets(sweep.task(0).spec().data.model_copy(update={"cache_dir": None}), sweep.root)
            assert np.allclose(direct.train.scalars, trainer.data.train.scalars, atol=1e-5)
            (image, values), target = direct.train[0]
            assert image.shape == (3, 8, 8) and values.shape == (2,)
    assert results["with"] > 0.9, results
    assert results["without"] < 0.7, results
