"""Every shipped spec in ``jobs/`` runs end to end, shrunk to a tiny size, on small files in its own layout."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from hpcvit.data.parquet import write_jets
from hpcvit.data.selection import cut_columns
from hpcvit.config import DataSpec
from hpcvit.ledger import find_sweep
from tests.conftest import REPO, children, hpcvit

JOBS = sorted((REPO / "jobs").glob("*.yaml"))


def _layout(data: dict, path: Path, index: int, n: int) -> None:
    """A small file of the layout the spec reads: its image column and channels, target, cut and scalar columns
    (hit lists: events from the generator, small ones)."""
    spec = DataSpec.model_validate({k: v for k, v in data.items() if k != "paths"} | {"paths": [str(path)]})
    if spec.task == "hit_clustering":
        from hpcvit.hits.generate import generate
        from hpcvit.hits.simulate import EventConfig

        generate(n, path, seed=index, cfg=EventConfig(jet_energy=(3.0, 6.0), particles=(2, 3), ecal_cell_mm=30.0))
        return
    rng = np.random.default_rng(index)
    published = 2 if spec.format == "hdf5" else (8 if spec.input_key == "X_jet" else 3)
    n_chans = max(published, max(spec.channels) + 1 if spec.channels else 0)
    if spec.task == "regression":
        y = rng.uniform(85.0, 500.0, n)
    else:
        y = (np.full(n, float(index % 2)) if len(data["paths"]) > 1 else (np.arange(n) % 2).astype(float))
    scalars = {name: rng.uniform(20.0, 100.0, n) for name in {*cut_columns(spec), *spec.scalar_inputs}}
    for key, (lo, hi) in spec.cuts.items():  # values inside the cuts
        name = key[4:-1].strip() if key.startswith("abs(") else key
        scalars[name] = rng.uniform(lo if lo is not None else (hi - 1), hi if hi is not None else lo + 1, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.format == "hdf5":
        with h5py.File(path, "w") as f:
            f.create_dataset(spec.input_key, data=rng.random((n, 32, 32, n_chans)).astype(np.float32))
            f.create_dataset(spec.target_key, data=y.astype(np.float32))
            for name, values in scalars.items():
                f.create_dataset(name, data=values)
    else:
        image = spec.input_key if spec.input_key != "X" else "X_jets"
        write_jets(path, rng.random((n, n_chans, 125, 125)) * (rng.random((n, n_chans, 125, 125)) < 0.05),
                   {spec.target_key: y, **scalars}, image_column=image, row_group_size=8)


def _tiny(doc: dict, workdir: Path) -> dict:
    doc = dict(doc)
    data = dict(doc.get("data", {}))
    if data.get("format", "synthetic") == "synthetic":
        data["synthetic"] = {**data.get("synthetic", {}), "n_samples": 96}
    else:
        n = 64 if len(data["paths"]) > 1 else 96
        paths = [str(workdir / "data" / Path(p).name) for p in data["paths"]]
        for i, p in enumerate(paths):
            _layout(data, Path(p), i, n)
        data["paths"] = paths
        data.pop("cache_dir", None)
    data["num_workers"] = 0
    doc["data"] = data
    doc["executor"] = "local"
    doc["optim"] = {**doc.get("optim", {}), "epochs": 1, "max_steps_per_epoch": 2, "batch_size": 8}
    doc["resources"] = {**doc.get("resources", {}), "gpus_per_node": 0, "nproc_per_node": 1, "cpus_per_task": 2,
                        "array_parallelism": 2}
    doc.pop("output_dir", None)
    sweep = doc.get("sweep")
    if sweep and sweep.get("search"):  # rungs of one and two epochs
        sweep["search"] = {**sweep["search"], "min_epochs": 1, "max_epochs": 2}
    if sweep:  # every model of the sweep, one value of everything else
        for block in ("grid", "zip"):
            for key, values in (sweep.get(block) or {}).items():
                if key not in ("model.name", "model.kwargs", "data.scalar_inputs") or block == "grid":
                    sweep[block][key] = values if key == "model.name" else values[:1]
    return doc


@pytest.mark.slow
@pytest.mark.parametrize("job", JOBS, ids=[p.stem for p in JOBS])
def test_every_job_spec_runs_end_to_end_in_a_tiny_size(workdir: Path, job: Path) -> None:
    doc = _tiny(yaml.safe_load(job.read_text()), workdir)
    if doc["model"]["name"] == "deepvit":  # the seed's 1024-wide DeepViT, cut down for 2 CPU cores
        doc["model"]["kwargs"] = {**doc["model"]["kwargs"], "dim": 64, "mlp_dim": 128, "depth": 2}
    spec = workdir / job.name
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = hpcvit("submit", str(spec), "--wait", cwd=workdir, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep = find_sweep(None, workdir / "runs")
    runs = children(sweep)
    assert len(runs) == len(sweep.tasks()) >= 1
    assert all(r.info.status == "FINISHED" for r in runs)
    metric = {"regression": "val_mae", "hit_clustering": "val_efficiency"}.get(doc["data"].get("task"), "val_roc_auc")
    assert all(metric in r.data.metrics for r in runs), [sorted(r.data.metrics) for r in runs]
