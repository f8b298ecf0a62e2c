"""The sweep's summary on its MLflow parent run: per configuration, the ranking metric's mean and std over seeds
and a bootstrap interval of that mean, as metrics the UI can sort; and one HTML page with the tables and the
sweep figure (``summary.html``)."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np

RESAMPLES = 100
"""Bootstrap resamples of a configuration's interval (test events resampled, the same ones for every seed)."""


def slug(config: str) -> str:
    """A configuration's label as an MLflow metric name segment (``cnn_small lr=0.001`` -> ``cnn_small lr_0.001``)."""
    return re.sub(r"[^\w\-. ]", "_", config).strip() or "run"


def _predictions(sweep: Any, task: int, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    path = sweep.task(task).file("predictions.npz")
    if not path.exists():
        return None
    with np.load(path) as data:
        if f"{split}_out" not in data.files or f"{split}_y" not in data.files:
            return None
        return np.asarray(data[f"{split}_out"], np.float64), np.asarray(data[f"{split}_y"], np.float64)


def interval(objective: Any, parts: list[tuple[np.ndarray, np.ndarray]], metric: str, seed: int = 0
             ) -> tuple[float, float] | None:
    """95 % percentile interval of the seeds' mean of ``metric`` over test events resampled alike for every seed
    (None when the seeds were not scored on the same events or the objective scores no arrays)."""
    if not parts or any(len(y) != len(parts[0][1]) or not np.array_equal(y, parts[0][1]) for _, y in parts):
        return None
    y = parts[0][1]
    classes = bool(np.isin(y, (0.0, 1.0)).all())
    groups = [np.flatnonzero(y > 0.5), np.flatnonzero(y <= 0.5)] if classes else [np.arange(len(y))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(RESAMPLES):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups if len(g)])
        scores = [objective.score(out[idx], y[idx]).get(metric) for out, _ in parts]
        if any(s is None or not np.isfinite(s) for s in scores):
            continue
        values.append(float(np.mean(scores)))
    if len(values) < RESAMPLES // 2:
        return None
    lo, hi = np.quantile(values, [0.025, 0.975])
    return float(lo), float(hi)


def parent_metrics(sweep: Any, result: Any, groups: list[dict[str, Any]]) -> dict[str, float]:
    """``<configuration>/<metric>_mean``, ``_std``, ``_n_seeds`` (and ``test_<m>_mean``, ``_std``,
    ``_low``, ``_high`` where there is a test split) of every configuration, for the parent run."""
    from hpcvit.objectives import get_objective

    objective = get_objective(sweep.run_spec(0).data.task)
    base = result.metric.partition("_")[2]
    out: dict[str, float] = {}
    for g in groups:
        name = slug(g["config"])
        out[f"{name}/n_seeds"] = float(g["n_seeds"])
        for prefix, metric in (("", result.metric), ("test_", f"test_{base}")):
            if g.get(f"{prefix}mean") is not None and (prefix or metric != f"test_{base}"):
                out[f"{name}/{metric}_mean"] = g[f"{prefix}mean"]
                out[f"{name}/{metric}_std"] = g[f"{prefix}std"]
        split = "test" if any(c.key.startswith("test_") for c in result.columns) else "val"
        if getattr(objective, "score", None) is not None:
            parts = [p for t in g["tasks"] if (p := _predictions(sweep, t, split)) is not None]
            found = interval(objective, parts, base) if len(parts) == len(g["tasks"]) else None
            if found is not None:
                out[f"{name}/{split}_{base}_low"], out[f"{name}/{split}_{base}_high"] = found
    return {k: v for k, v in out.items() if v is not None and np.isfinite(v)}


def write_html(path: Path, result: Any, groups: list[dict[str, Any]], metrics: dict[str, float],
               figure: Path | None) -> Path:
    """One self-contained page: the runs' table, the configurations' mean +- std and intervals, the figure."""
    import base64

    from hpcvit.results.rows import cell

    e = html.escape
    rows = "".join("<tr>" + "".join(f"<td>{e(cell(r, c))}</td>" for c in result.columns) + "</tr>" for r in result.rows)
    head = "".join(f"<th>{e(c.header)}</th>" for c in result.columns)
    conf = ""
    for g in groups:
        name = slug(g["config"])
        cells = [e(g["config"]), str(g["n_seeds"])]
        for key in (f"{result.metric}_mean", f"{result.metric}_std"):
            cells.append(f"{metrics.get(f'{name}/{key}', float('nan')):.4f}")
        low = next((v for k, v in metrics.items() if k.startswith(f"{name}/") and k.endswith("_low")), None)
        high = next((v for k, v in metrics.items() if k.startswith(f"{name}/") and k.endswith("_high")), None)
        cells.append(f"[{low:.4f}, {high:.4f}]" if low is not None and high is not None else "")
        conf += "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
    image = ""
    if figure is not None and figure.exists():
        image = f'<img alt="sweep figure" style="max-width:100%" src="data:image/png;base64,' \
                f'{base64.b64encode(figure.read_bytes()).decode()}">'
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(result.sweep_id)}</title>
<style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}td:nth-child(2),th:nth-child(2){{text-align:left}}</style>
</head><body><h2>{e(result.sweep_id)}: runs by {e(result.metric)}</h2>
<table><tr>{head}</tr>{rows}</table>
<h3>configurations over seeds ({e(result.metric)}: mean, std; 95 % bootstrap interval of the mean)</h3>
<table><tr><th>configuration</th><th>seeds</th><th>mean</th><th>std</th><th>interval</th></tr>{conf}</table>
{image}</body></html>
"""
    path.write_text(page)
    return path
