"""Side-by-side comparison of a sweep's runs from its MLflow child runs."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.table import Table

from hpcvit.ledger import SweepDir
from hpcvit.results.rows import Comparison, cell, comparison
from hpcvit.tables import RECORD_FORMATS, records_text
from hpcvit.tracking import names

def compare_rows(sweep: SweepDir, metric: str | None = None) -> Comparison:
    """The sweep's runs side by side (:func:`hpcvit.results.rows.comparison`)."""
    return comparison(sweep, metric)


def seed_groups(sweep: SweepDir, result: Comparison) -> list[dict[str, Any]]:
    """Runs that differ only in ``optim.seed`` grouped: mean and sample std of the ranking metric (and of its
    test value when the sweep has a test split), best first."""
    import numpy as np

    from hpcvit.objectives import metric_mode

    specs = sweep.run_specs()
    labels = sweep.labels
    groups: dict[str, list[dict[str, Any]]] = {}
    config_names: dict[str, str] = {}
    for row in result.ranked():
        if not 0 <= row["task"] < len(specs):
            continue
        spec = specs[row["task"]].model_dump(mode="json")
        spec["optim"].pop("seed")
        spec.pop("description")
        key = json.dumps(spec, sort_keys=True)
        groups.setdefault(key, []).append(row)
        label = labels[row["task"]] if row["task"] < len(labels) else row["model"]
        config_names.setdefault(key, " ".join(p for p in label.split() if not p.startswith("seed=")))
    base = result.metric.partition("_")[2]
    test = f"test_{base}" if result.metric != f"test_{base}" and any(f"test_{base}" in r for r in result.rows) \
        else None
    out = []
    for key, members in groups.items():
        group = {"config": config_names[key], "n_seeds": len(members), "metric": result.metric,
                 "tasks": sorted(m["task"] for m in members)}
        for name, prefix in ((result.metric, ""), (test, "test_")):
            if name is None:
                continue
            values = np.array([m[name] for m in members if m.get(name) is not None], dtype=float)
            values = values[np.isfinite(values)]
            group[f"{prefix}mean"] = float(values.mean()) if len(values) else None
            group[f"{prefix}std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0 if len(values) else None
        out.append(group)
    maximise = metric_mode(result.metric) == "max"
    return sorted(out, key=lambda g: -g["mean"] if maximise else g["mean"])


def seed_table(sweep: SweepDir, result: Comparison) -> Table | None:
    """Mean +- std over seeds, when the sweep has more than one seed of some configuration."""
    groups = seed_groups(sweep, result)
    if not any(g["n_seeds"] > 1 for g in groups):
        return None
    with_test = any("test_mean" in g for g in groups)
    base = result.metric.partition("_")[2]
    table = Table(title=f"{sweep.sweep_id}: {result.metric} over seeds (mean +- std)")
    headers = ["configuration", "seeds", result.metric, *([f"test_{base}"] if with_test else []), "tasks"]
    for col in headers:
        table.add_column(col, justify="left" if col in ("configuration", "tasks") else "right")

    def pm(g: dict[str, Any], prefix: str) -> str:
        mean, std = g.get(f"{prefix}mean"), g.get(f"{prefix}std")
        return "" if mean is None else f"{mean:.4f} +- {std:.4f}"

    for g in groups:
        table.add_row(g["config"], str(g["n_seeds"]), pm(g, ""), *([pm(g, "test_")] if with_test else []),
                      ",".join(map(str, g["tasks"])))
    return table


def compare_table(result: Comparison, width: int = 200) -> Table:
    from hpcvit.tables import Column, fit

    columns = [Column(c.header, numeric=c.numeric, priority=c.priority) for c in result.columns]
    cells = [[cell(r, c) for c in result.columns] for r in result.rows]
    kept = "test at the kept epoch, " if any(c.key.startswith("test_") for c in result.columns) else ""
    title = f"{result.sweep_id}: runs by {result.metric} (val: best epoch; {kept}val last: last epoch)"
    return fit(title, columns, cells, width)


def render(result: Comparison, fmt: str) -> str:
    if fmt in RECORD_FORMATS:
        return records_text(result.records(), fmt, None if result.rows else [c.key for c in result.columns])
    lines = ["| " + " | ".join(c.header for c in result.columns) + " |", "|" + "---|" * len(result.columns)]
    lines += ["| " + " | ".join(cell(r, c) if c.key != "status" else str(r[c.key]) for c in result.columns)
              + " |" for r in result.rows]
    return "\n".join(lines)


def has_test(sweep: SweepDir) -> bool:
    return any(s.data.test_fraction > 0 for s in sweep.run_specs())


def overlay_runs(sweep: SweepDir, split: str | None = None) -> dict[str, Any]:
    """Each finished run's part of the sweep figure (the objective's ``overlay_data``) on ``split`` (``val`` or
    ``test``; default: test when the sweep has a test split), by run label."""
    import numpy as np

    from hpcvit.objectives import get_objective

    split = split or ("test" if has_test(sweep) else "val")
    labels = sweep.labels
    objective = get_objective(sweep.run_spec(0).data.task)
    runs: dict[str, Any] = {}
    if objective.overlay is None:
        return runs
    for task in sweep.tasks():
        path = task.file(task.PREDICTIONS)
        if not path.exists():
            continue
        with np.load(path) as data:
            predictions = {k.removeprefix(f"{split}_"): data[k] for k in data.files if k.startswith(f"{split}_")}
        part = objective.overlay_data(task.path, predictions)
        if part is not None:
            runs[f"{task.index}: {labels[task.index] if task.index < len(labels) else ''}"] = part
    return runs


def plot_overlay(sweep: SweepDir, path: Any, split: str | None = None) -> Any:
    """The objective's sweep figure over every finished run (ROC curves, residuals, binned efficiencies), on
    ``split`` (default: test when the sweep has one)."""
    from pathlib import Path

    from hpcvit.objectives import get_objective
    from hpcvit.results.plots import OVERLAYS

    split = split or ("test" if has_test(sweep) else "val")
    if split == "test" and not has_test(sweep):
        raise ValueError(f"--split test: sweep {sweep.sweep_id} has no test split (data.test_fraction is 0)")
    objective = get_objective(sweep.run_spec(0).data.task)
    runs = overlay_runs(sweep, split)
    if not runs:
        what = "no figure over runs" if objective.overlay is None else "no finished run with predictions"
        raise ValueError(f"{what} for a {objective.name} sweep in {sweep.sweep_id}")
    return OVERLAYS[objective.overlay](runs, Path(path), sweep.sweep_id, {"val": "validation"}.get(split, split))


def overlay_name(sweep: SweepDir) -> str:
    """File name of the sweep figure on the parent run (``roc_overlay.png``, ...)."""
    from hpcvit.objectives import get_objective

    return f"{get_objective(sweep.run_spec(0).data.task).overlay}_overlay.png"


def finalize_parent(sweep: SweepDir, status: str) -> None:
    """Once every task is final: the sweep's summary table and its figure over the runs on the parent run, then
    close it with ``status`` (an MLflow run status)."""
    from hpcvit.tracking import mlflow_client

    m = sweep.manifest
    client = mlflow_client(m["tracking_uri"])
    parent = client.get_run(m["parent_run_id"])
    if parent.data.tags.get(names.SUMMARY_TAG) != "logged":
        out = sweep.root / "summary"
        out.mkdir(exist_ok=True)
        from hpcvit.results.summary import parent_metrics, write_html

        result = compare_rows(sweep)
        (out / "summary.csv").write_text(render(result, "csv"))
        (out / "summary.md").write_text(render(result, "markdown"))
        client.log_artifact(parent.info.run_id, str(out / "summary.csv"))
        client.log_artifact(parent.info.run_id, str(out / "summary.md"))
        png = None
        if overlay_runs(sweep):
            png = plot_overlay(sweep, out / overlay_name(sweep))
            client.log_artifact(parent.info.run_id, str(png))
            client.log_artifact(parent.info.run_id, str(png.with_suffix(".pdf")))
        groups = seed_groups(sweep, result)
        summary = parent_metrics(sweep, result, groups)
        if summary:
            from mlflow.entities import Metric

            stamp = int(time.time() * 1000)
            client.log_batch(parent.info.run_id, metrics=[Metric(k, v, stamp, 0) for k, v in summary.items()])
        client.log_artifact(parent.info.run_id, str(write_html(out / "summary.html", result, groups, summary, png)))
        client.set_tag(parent.info.run_id, names.SUMMARY_TAG, "logged")
    if parent.info.status != status:
        client.set_terminated(parent.info.run_id, status)
