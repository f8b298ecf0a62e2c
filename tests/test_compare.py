"""Comparison helpers: runs that differ only by seed are summarised as mean +- std."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcvit.results.compare import render, seed_groups
from hpcvit.ledger import create_sweep_dir
from hpcvit.sweep import expand


def test_seed_groups_mean_and_std(tmp_path: Path) -> None:
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text("name: s\n")
    sweep = expand({"name": "s", "model": {"name": "cnn_small"},
                    "sweep": {"grid": {"model.name": ["cnn_small", "vit_seed"], "optim.seed": [0, 1, 2]}}})
    sweep_dir = create_sweep_dir(tmp_path / "runs", "s-1", spec_file, [r.spec for r in sweep.runs], "local",
                                 [r.label for r in sweep.runs])
    best = [0.80, 0.82, 0.84, 0.70, 0.71, None]  # task 5 has no metric yet: left out
    rows = [{"task": i, "best": b, "metric": "val_roc_auc"} for i, b in enumerate(best)]
    groups = seed_groups(sweep_dir, rows)
    assert [g["config"] for g in groups] == ["cnn_small", "vit_seed"]
    assert groups[0]["n_seeds"] == 3 and groups[0]["mean"] == pytest.approx(0.82)
    assert groups[0]["std"] == pytest.approx(0.02)
    assert groups[1]["tasks"] == [3, 4] and groups[1]["mean"] == pytest.approx(0.705)


def test_render_formats() -> None:
    rows = [{"task": 0, "run": "r", "model": "m", "status": "FINISHED", "params_M": 1.0, "epochs": 2, "best": 0.9,
             "final": 0.89, "rej@0.3": 12.0, "rej@0.5": 5.0, "img_s": 100.0, "wall_min": 1.5}]
    assert render(rows, "markdown").splitlines()[2].startswith("| 0 | r | m | FINISHED | 1.00 | 2 | 0.9000")
    assert render(rows, "csv").splitlines()[1].startswith("0,r,m,FINISHED,1.0,2,0.9,0.89")
    assert '"best": 0.9' in render(rows, "json")
