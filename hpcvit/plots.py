"""ROC curves, score histograms and the sweep's ROC overlay, as files for MLflow artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_table(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Rows of (fpr, tpr, threshold)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, score)
    return np.stack([fpr, tpr, thr], axis=1)


def write_roc_artifacts(out_dir: Path, y: np.ndarray, score: np.ndarray, label: str) -> list[Path]:
    """roc_curve.csv, roc_curve.png (rejection vs efficiency, the physics reading) and scores.png."""
    from sklearn.metrics import roc_auc_score

    out_dir.mkdir(parents=True, exist_ok=True)
    table = roc_table(y, score)
    csv = out_dir / "roc_curve.csv"
    np.savetxt(csv, table, delimiter=",", header="fpr,tpr,threshold", comments="", fmt="%.8g")
    auc = roc_auc_score(y, score)
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    ax1.plot(table[:, 0], table[:, 1], label=f"{label} (AUC {auc:.4f})")
    ax1.plot([0, 1], [0, 1], ls=":", c="grey")
    ax1.set(xlabel="background efficiency (FPR)", ylabel="signal efficiency (TPR)", title="ROC")
    ax1.legend(loc="lower right")
    keep = table[:, 0] > 0
    ax2.semilogy(table[keep, 1], 1 / table[keep, 0])
    ax2.set(xlabel=r"signal efficiency $\varepsilon_S$", ylabel=r"background rejection $1/\varepsilon_B$",
            title="rejection vs efficiency")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    png = out_dir / "roc_curve.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    bins = np.linspace(float(score.min()), float(score.max()), 50)
    for cls, name in ((0, "background (y=0)"), (1, "signal (y=1)")):
        ax.hist(score[y == cls], bins=bins, histtype="step", density=True, label=name)
    ax.set(xlabel="classifier output (logit)", ylabel="density", title=label)
    ax.legend()
    fig.tight_layout()
    hist = out_dir / "scores.png"
    fig.savefig(hist, dpi=110)
    plt.close(fig)
    return [csv, png, hist]


def roc_overlay(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """All runs' ROC curves (as rejection vs signal efficiency) on one plot; ``curves``: label -> (y, score)."""
    from sklearn.metrics import roc_auc_score

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for label, (y, score) in sorted(curves.items(), key=lambda kv: -roc_auc_score(*kv[1])):
        table = roc_table(y, score)
        auc = roc_auc_score(y, score)
        ax1.plot(table[:, 0], table[:, 1], label=f"{label}: {auc:.4f}")
        keep = table[:, 0] > 0
        ax2.semilogy(table[keep, 1], 1 / table[keep, 0], label=label)
    ax1.plot([0, 1], [0, 1], ls=":", c="grey")
    ax1.set(xlabel="background efficiency", ylabel="signal efficiency", title=f"{title}: ROC-AUC")
    ax1.legend(loc="lower right", fontsize=8)
    ax2.set(xlabel=r"signal efficiency $\varepsilon_S$", ylabel=r"$1/\varepsilon_B$", title="background rejection")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
