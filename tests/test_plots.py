"""Plots for a talk: AUC with its bootstrap interval and the split in the legend, PNG and PDF, lower bounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from hpcvit.objectives.figures import auc_interval, write_roc_artifacts
from hpcvit.results.plots import roc_overlay


def _scores(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(float)
    return y, rng.normal(y * 1.2, 1.0)


def test_the_bootstrap_interval_holds_the_auc_and_shrinks_with_more_events() -> None:
    y, s = _scores()
    auc, lo, hi = auc_interval(y, s)
    assert auc == np.float64(roc_auc_score(y, s)) or abs(auc - roc_auc_score(y, s)) < 1e-12
    assert lo < auc < hi and 0.005 < hi - lo < 0.08
    y4, s4 = _scores(8000, seed=1)
    _, lo4, hi4 = auc_interval(y4, s4)
    assert hi4 - lo4 < (hi - lo) * 0.75, "four times the events: about half the width"


def test_artifacts_and_overlay_are_png_and_pdf(tmp_path: Path) -> None:
    y, s = _scores(400)
    paths = write_roc_artifacts(tmp_path / "roc", y, s, "cnn_small", "test")
    names = sorted(p.name for p in paths)
    assert names == ["roc_curve.csv", "roc_curve.pdf", "roc_curve.png", "scores.pdf", "scores.png"]
    assert (tmp_path / "roc" / "roc_curve.pdf").read_bytes().startswith(b"%PDF")
    png = roc_overlay({"0: cnn": (y, s), "1: vit": _scores(400, 3)}, tmp_path / "overlay.png", "sweep")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"
    from PIL import Image

    assert Image.open(png).info.get("dpi", (0, 0))[0] > 190
