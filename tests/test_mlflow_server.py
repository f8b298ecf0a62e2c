"""A sweep tracked through a real ``mlflow server`` (SQLite backend, proxied artifacts) instead of a SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hpcvit.ledger import find_sweep
from hpcvit.tracking.server import start_server, stop_server
from tests.conftest import SPEC, children, hpcvit, write_spec

pytestmark = pytest.mark.slow

EPOCHS = 2


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real lean ``mlflow server`` on a free 127.0.0.1 port over a fresh SQLite file; yields (url, its dir)."""
    store = tmp_path / "server"
    store.mkdir()
    proc, url = start_server(f"sqlite:///{store / 'mlflow.db'}", store / "artifacts", port=0,
                             log_path=store / "server.log")
    try:
        yield url, store
    finally:
        stop_server(proc)  # SIGTERM to its process group, even when the test failed


def test_sweep_tracked_through_mlflow_server(workdir: Path, mlflow_server: tuple[str, Path]) -> None:
    url, store = mlflow_server
    spec = write_spec(workdir, SPEC.format(name="served", n=320, size=16, epochs=EPOCHS) + f"""
tracking:
  uri: {url}
sweep:
  grid:
    model.name: [cnn_small, vit_seed]
    model.kwargs: [{{}}]
""")
    proc = hpcvit("submit", str(spec), "--wait", cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = find_sweep(None, workdir / "runs")
    m = sweep.manifest
    assert m["tracking_uri"] == url
    assert not (workdir / "runs" / "mlflow.db").exists(), "nothing may fall back to a local SQLite file"

    client = MlflowClient(url)
    experiment = client.get_experiment(m["experiment_id"])
    assert experiment.name == "served"
    # Created by the server: artifacts go through its proxy, not to a path on the submitting machine.
    assert experiment.artifact_location.startswith("mlflow-artifacts:/"), experiment.artifact_location

    parent = client.get_run(m["parent_run_id"])
    assert parent.data.tags["hpcvit.sweep_id"] == sweep.sweep_id
    assert parent.info.status == "FINISHED"
    assert "spec.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]

    runs = children(sweep)
    assert len(runs) == 2
    assert sorted(r.data.tags["hpcvit.model"] for r in runs) == ["cnn_small", "vit_seed"]
    for run in runs:
        rid = run.info.run_id
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED", (rid, run.info.status)
        assert run.data.tags["hpcvit.task_key"] == f"{sweep.sweep_id}/{int(run.data.tags['hpcvit.task_index']):05d}"
        params = run.data.params
        assert params["model.name"] == run.data.tags["hpcvit.model"]
        assert params["optim.epochs"] == str(EPOCHS)
        assert params["dist.world_size"] == "2"
        assert params["tracking.uri"] == url
        for key in ("val_roc_auc", "val_loss", "train_loss", "throughput_img_s"):
            history = client.get_metric_history(rid, key)
            assert sorted(h.step for h in history) == list(range(EPOCHS)), (key, [h.step for h in history])
        assert 0.0 <= run.data.metrics["val_roc_auc"] <= 1.0
        artifacts = [a.path for a in client.list_artifacts(rid)]
        assert "spec.json" in artifacts and "predictions.npz" in artifacts, artifacts
    # The artifacts really went through the server into its --artifacts-destination.
    stored = {p.name for p in (store / "artifacts").rglob("*") if p.is_file()}
    assert {"spec.yaml", "spec.json", "predictions.npz"} <= stored, stored
