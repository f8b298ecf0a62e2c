"""The sweep's figures, every finished run on one plot for its parent run and ``compare --plot``: ROC curves
(and rejection) of classifiers, residuals of regressions, binned clustering efficiencies. Each objective names
its figure (``Objective.overlay``) and hands over each run's data (``Objective.overlay_data``)."""

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
    return _write(plt, fig, path)


def residual_overlay(runs: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str,
                     split: str = "validation") -> Path:
    """Every run's predicted against true values, its relative residual distribution, and its relative
    resolution (half the central 68 % interval of the relative residual) and median bias in deciles of the true
    value; ``runs``: label -> (true, predicted)."""
    plt = pyplot()
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(16, 4.8))
    lo, hi = np.inf, -np.inf
    for k, (label, (y, pred)) in enumerate(sorted(runs.items())):
        y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
        colour = f"C{k % 10}"
        ax0.scatter(y, pred, s=3, alpha=0.3, color=colour, label=label, rasterized=True)
        if len(y):
            lo, hi = min(lo, float(y.min()), float(pred.min())), max(hi, float(y.max()), float(pred.max()))
        keep = np.abs(y) > 0
        y, rel = y[keep], (pred[keep] - y[keep]) / np.abs(y[keep])
        if not len(rel):
            continue
        mre = float(np.mean(np.abs(rel)))
        ax1.hist(np.clip(rel, -1, 1), bins=60, range=(-1, 1), histtype="step", color=colour,
                 label=f"{label} (MRE {mre:.3f})")
        edges = np.unique(np.quantile(y, np.linspace(0, 1, 11)))
        which = np.clip(np.digitize(y, edges[1:-1]), 0, len(edges) - 2)
        bins = [i for i in range(len(edges) - 1) if (which == i).any()]
        centres = [(edges[i] + edges[i + 1]) / 2 for i in bins]
        resolution = [float(np.diff(np.quantile(rel[which == i], [0.16, 0.84]))[0] / 2) for i in bins]
        medians = [float(np.median(rel[which == i])) for i in bins]
        ax2.plot(centres, resolution, "o-", color=colour, label=f"{label}: resolution")
        ax2.plot(centres, medians, "x:", color=colour, label=f"{label}: median")
    if np.isfinite(lo):
        ax0.plot([lo, hi], [lo, hi], ls=":", c="grey")
    ax0.set(xlabel="true value", ylabel="predicted value", title=f"{title}: {split} samples")
    ax0.legend(fontsize=7, markerscale=3)
    ax1.set(xlabel="(predicted - true) / |true| (clipped to +-1)", ylabel=f"{split} samples", title="residuals")
    ax1.legend(fontsize=7)
    ax2.axhline(0, ls=":", c="grey")
    ax2.set(xlabel="true value (deciles)", ylabel="relative residual",
            title="resolution (68 % half-width, o) and median bias (x)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=6)
    return _write(plt, fig, path)


def binned_overlay(runs: dict[str, list[dict[str, str]]], path: Path, title: str, split: str = "test") -> Path:
    """Every run's clustering efficiency and merge rate against particle energy and against the distance to the
    nearest particle, with the topological baseline of the first run (the same test events for every run of a
    sweep); ``runs``: label -> rows of its ``efficiency_binned.csv`` (always of the test events)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex="col")
    variables = (("true_energy", "particle energy (GeV)"), ("nearest", "distance to the nearest particle (mm)"))
    baseline = next(([r for r in rows if r["method"] == "topological"] for rows in runs.values()), [])
    lines = {**{label: [r for r in rows if r["method"] != "topological"] for label, rows in sorted(runs.items())},
             "topological baseline": baseline}
    for col, (key, xlabel) in enumerate(variables):
        for label, rows in lines.items():
            sel = [r for r in rows if r["variable"] == key and int(r["n"]) > 0]
            x = [float(r["lo"]) if float(r["hi"]) == np.inf else (float(r["lo"]) + float(r["hi"])) / 2 for r in sel]
            style = ":" if label == "topological baseline" else "-"
            axes[0, col].plot(x, [float(r["efficiency"]) for r in sel], "o" + style, label=label)
            axes[1, col].plot(x, [float(r["merge_rate"]) for r in sel], "x" + style, label=label)
        axes[0, col].set(ylabel="efficiency", ylim=(0, 1.02))
        axes[1, col].set(xlabel=xlabel, ylabel="merge rate", ylim=(0, 1.02))
        for ax in axes[:, col]:
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{title}: clustering of each run's test events (bins with particles)")
    return _write(plt, fig, path)


def _write(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(fig, path)
    plt.close(fig)
    return path


OVERLAYS = {"roc": roc_overlay, "residuals": residual_overlay, "binned": binned_overlay}
"""The sweep figures by the name an objective gives (``Objective.overlay``)."""
