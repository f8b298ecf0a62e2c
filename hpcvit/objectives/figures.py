"""The figures of one finished run, as files for MLflow artifacts and talks: a classifier's ROC curve and score
histograms, a regression's residuals; and the drawing they share with the sweep's overlay
(:mod:`hpcvit.results.plots`).

Every plot is written as PNG (200 dpi) and PDF; the legend gives the ROC-AUC with its 95 % bootstrap
interval and the split it was measured on; points of the rejection curve where no background event is left
(the rejection is then only a lower bound, the number of background events) are marked with triangles.
mplhep's CMS-like style is used when mplhep is installed (``pip install mplhep``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DPI = 200
BOOTSTRAP = 300
"""Resamples of the bootstrap interval of the ROC-AUC."""


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        import mplhep

        plt.style.use(mplhep.style.CMS)
    except ImportError:
        pass
    return plt


def roc_table(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Rows of (fpr, tpr, threshold)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, score)
    return np.stack([fpr, tpr, thr], axis=1)


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC from ranks (ties averaged): the Mann-Whitney statistic."""
    from scipy.stats import rankdata

    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_interval(y: np.ndarray, score: np.ndarray, level: float = 0.95, n: int = BOOTSTRAP,
                 seed: int = 0) -> tuple[float, float, float]:
    """(AUC, low, high): the ROC-AUC and its percentile bootstrap interval (resampling events, both classes
    kept in every resample)."""
    y, score = np.asarray(y), np.asarray(score)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y > 0.5), np.flatnonzero(y <= 0.5)
    values = []
    for _ in range(n):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        values.append(auc(y[idx], score[idx]))
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return auc(y, score), float(lo), float(hi)


def legend(label: str, y: np.ndarray, score: np.ndarray, split: str) -> str:
    auc, lo, hi = auc_interval(y, score)
    return f"{label}: AUC {auc:.4f} [{lo:.4f}, {hi:.4f}] ({split})"


def rejection_curve(ax, table: np.ndarray, n_bkg: int, label: str | None = None) -> None:
    keep = table[:, 0] > 0
    line = ax.semilogy(table[keep, 1], 1 / table[keep, 0], label=label)[0]
    bound = keep & (table[:, 0] * n_bkg <= 1.0 + 1e-9)  # a single background event left: a lower bound
    if bound.any():
        ax.semilogy(table[bound, 1], 1 / table[bound, 0], "^", ms=4, color=line.get_color())


def save(fig, png: Path) -> list[Path]:
    pdf = png.with_suffix(".pdf")
    fig.savefig(png, dpi=DPI)
    fig.savefig(pdf)
    return [png, pdf]


def write_roc_artifacts(out_dir: Path, y: np.ndarray, score: np.ndarray, label: str,
                        split: str = "validation") -> list[Path]:
    """roc_curve.csv, roc_curve.png/.pdf (ROC and rejection vs efficiency) and scores.png/.pdf."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = roc_table(y, score)
    csv = out_dir / "roc_curve.csv"
    np.savetxt(csv, table, delimiter=",", header="fpr,tpr,threshold", comments="", fmt="%.8g")
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    ax1.plot(table[:, 0], table[:, 1], label=legend(label, y, score, split))
    ax1.plot([0, 1], [0, 1], ls=":", c="grey")
    ax1.set(xlabel="background efficiency (FPR)", ylabel="signal efficiency (TPR)", title="ROC")
    ax1.legend(loc="lower right", fontsize=8)
    rejection_curve(ax2, table, int(np.sum(y <= 0.5)))
    ax2.set(xlabel=r"signal efficiency $\varepsilon_S$", ylabel=r"background rejection $1/\varepsilon_B$",
            title="rejection vs efficiency (triangles: lower bounds)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    written = save(fig, out_dir / "roc_curve.png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    bins = np.linspace(float(score.min()), float(score.max()), 50)
    for cls, name in ((0, "background (y=0)"), (1, "signal (y=1)")):
        ax.hist(score[y == cls], bins=bins, histtype="step", density=True, label=name)
    ax.set(xlabel="classifier output (logit)", ylabel="density", title=f"{label} ({split})")
    ax.legend()
    fig.tight_layout()
    written += save(fig, out_dir / "scores.png")
    plt.close(fig)
    return [csv, *written]


def write_residual_artifacts(out_dir: Path, y: np.ndarray, pred: np.ndarray, label: str, split: str = "validation",
                             target: str = "target") -> list[Path]:
    """residuals.csv (true, predicted) and residuals.png/.pdf: predicted against true values, and the
    distribution of the relative residual (prediction - truth) / |truth|."""
    out_dir.mkdir(parents=True, exist_ok=True)
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    csv = out_dir / "residuals.csv"
    np.savetxt(csv, np.stack([y, pred], axis=1), delimiter=",", header="true,predicted", comments="", fmt="%.8g")
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    ax1.scatter(y, pred, s=4, alpha=0.4)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax1.plot([lo, hi], [lo, hi], ls=":", c="grey")
    ax1.set(xlabel=f"true {target}", ylabel=f"predicted {target}", title=f"{label} ({split})")
    nonzero = np.abs(y) > 0
    rel = (pred[nonzero] - y[nonzero]) / np.abs(y[nonzero])
    if len(rel):
        ax2.hist(rel, bins=50, histtype="step")
    ax2.set(xlabel="(predicted - true) / |true|", ylabel="samples",
            title=f"relative residual: median {np.median(rel) if len(rel) else float('nan'):.3g}")
    fig.tight_layout()
    written = save(fig, out_dir / "residuals.png")
    plt.close(fig)
    return [csv, *written]
