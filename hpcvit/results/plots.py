"""The sweep's figures: every finished run's ROC curve (and rejection) on one plot, for its parent run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpcvit.objectives.figures import auc, legend, pyplot, rejection_curve, roc_table, save


def roc_overlay(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str,
                split: str = "validation") -> Path:
    """All runs' ROC curves (and rejection vs signal efficiency) on one plot; ``curves``: label -> (y, score).
    Writes ``path`` (PNG) and the same name with ``.pdf``; returns ``path``."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for label, (y, score) in sorted(curves.items(), key=lambda kv: -auc(*kv[1])):
        table = roc_table(y, score)
        ax1.plot(table[:, 0], table[:, 1], label=legend(label, y, score, split))
        rejection_curve(ax2, table, int(np.sum(y <= 0.5)), label)
    ax1.plot([0, 1], [0, 1], ls=":", c="grey")
    ax1.set(xlabel="background efficiency", ylabel="signal efficiency", title=f"{title}: ROC")
    ax1.legend(loc="lower right", fontsize=7)
    ax2.set(xlabel=r"signal efficiency $\varepsilon_S$", ylabel=r"$1/\varepsilon_B$",
            title="background rejection (triangles: lower bounds)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(fig, path)
    plt.close(fig)
    return path
