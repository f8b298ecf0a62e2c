"""Every cut form of the README trains and is tracked under a valid, reversible MLflow name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpcvit.data.parquet import write_jets
from hpcvit.tracking import mlflow_client
from hpcvit.tracking.names import name_parts
from hpcvit.training.loop import Trainer
from tests.conftest import children
from tests.test_train_features import make_sweep

SPEC = """
name: cuts
data:
  format: parquet
  paths: [{path}]
  input_key: X_jets
  val_fraction: 0.25
model:
  name: cnn_small
  kwargs: {{width: 8}}
optim: {{lr: 3e-3, epochs: 1, batch_size: 32}}
checkpoint: {{every_minutes: null}}
resources: {{nproc_per_node: 1}}
sweep:
  grid:
    data.cuts:
      - {{pt: [20, 100], "abs(ieta)": [null, 1.4]}}
      - {{pt: [20, null]}}
      - {{pt: [null, 100]}}
      - {{"abs( ieta )": [null, 1.4]}}
      - {{"abs(ieta)": [0.1, 1.4], pt: [30, 90]}}
"""


def test_every_cut_form_trains_and_is_searchable_in_mlflow(workdir: Path) -> None:
    rng = np.random.default_rng(0)
    n = 600
    path = write_jets(workdir / "jets.parquet", rng.random((n, 3, 8, 8)),
                      {"y": np.arange(n) % 2, "pt": rng.uniform(0, 120, n), "ieta": rng.uniform(-2.5, 2.5, n)},
                      row_group_size=50)
    sweep = make_sweep(workdir, SPEC.format(path=path))
    assert len(sweep.tasks()) == 5
    for task in sweep.tasks():
        assert Trainer(task).run() == 0
        assert task.result()["status"] == "completed"
    runs = {int(r.data.tags["hpcvit.task_index"]): r for r in children(sweep)}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    first = runs[0].data.params
    assert first["data.cuts.abs:28ieta:29"] == "[None, 1.4]" and first["data.cuts.pt"] == "[20.0, 100.0]"
    assert {tuple(name_parts(k)) for k in first if k.startswith("data.cuts.")} == {
        ("data", "cuts", "abs(ieta)"), ("data", "cuts", "pt")}
    assert name_parts(next(k for k in runs[3].data.params if k.startswith("data.cuts.")))[2] == "abs( ieta )"
    client = mlflow_client(sweep.manifest["tracking_uri"])
    found = client.search_runs([sweep.manifest["experiment_id"]], "params.`data.cuts.abs:28ieta:29` = '[None, 1.4]'")
    assert {int(r.data.tags["hpcvit.task_index"]) for r in found} == {0}
