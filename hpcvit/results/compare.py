"""Side-by-side comparison of a sweep's runs from its MLflow child runs."""

from __future__ import annotations

import json
import math
from typing import Any

from rich.table import Table

from hpcvit.ledger import SweepDir
from hpcvit.tables import RECORD_FORMATS, records_text
from hpcvit.tracking import names

_BASE = ("task", "run", "model", "status", "params_M", "epochs", "best", "final")
_TAIL = ("img_s", "wall_min")


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """The record columns: the common ones and the objective's own (those its rows carry)."""
    extra = [c.key for c in _known_columns().values() if rows and c.key in rows[0]]
    return [*_BASE, *extra, *_TAIL]


def _known_columns() -> dict[str, Any]:
    from hpcvit.objectives import objective_names
    from hpcvit.objectives.registry import get_objective

    return {c.key: c for name in objective_names() for c in get_objective(name).compare_columns}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def compare_rows(sweep: SweepDir, metric: str | None = None) -> list[dict[str, Any]]:
    """One row per task with its best/final metric, sorted best first."""
    from hpcvit.tracking import child_runs, mlflow_client

    from hpcvit.objectives import get_objective, metric_mode

    m = sweep.manifest
    specs = sweep.run_specs()
    objective = get_objective(specs[0].data.task)
    if metric:
        from hpcvit.objectives import check_metric

        problem = check_metric(objective.name, "val_" + metric.removeprefix("test_").removeprefix("val_"), "")
        if problem or not metric.startswith(("val_", "test_")):
            valid = [f"val_{m.name}" for m in objective.metrics]
            raise ValueError(f"--metric {metric}: not a metric of this {objective.name} sweep (one of "
                             f"{', '.join(valid)}, or test_ instead of val_)")
    metric = metric or objective.primary_metric(specs[0].checkpoint.best_metric)[0]  # what the spec ranks by
    maximise = metric_mode(metric) == "max"
    client = mlflow_client(m["tracking_uri"])
    rows = []
    for run in child_runs(m["tracking_uri"], m["experiment_id"], m["parent_run_id"]):
        history = client.get_metric_history(run.info.run_id, metric)
        values = [h.value for h in sorted(history, key=lambda h: h.step)]
        best = (max(values) if maximise else min(values)) if values else None
        best_step = next((h.step for h in history if h.value == best), None)
        index = int(run.data.tags.get(names.TASK_INDEX_TAG, -1))
        metrics = run.data.metrics
        wall = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 60000 if run.info.start_time else None
        row = {
            "task": index, "run": run.info.run_name, "model": run.data.tags.get(names.MODEL_TAG, ""),
            "status": run.info.status, "params_M": float(run.data.params.get("model.n_params", "nan")) / 1e6,
            "epochs": len(values), "best": best, "best_epoch": best_step, "final": values[-1] if values else None}
        for c in objective.compare_columns:  # the objective's own columns, and whether a value is a lower bound
            row[c.key] = metrics.get(c.metric)
            if c.bound:
                row[f"{c.key}_bound"] = bool(metrics.get(f"{c.metric}_is_bound"))
        rows.append({**row, "img_s": metrics.get("throughput_img_s"), "wall_min": wall, "metric": metric,
                     "run_id": run.info.run_id, "sample_word": objective.sample_word})
    rows.sort(key=lambda r: (r["best"] is None, -(r["best"] or 0) if maximise else (r["best"] or 0)))
    _add_rungs(sweep, rows)
    return rows


def _add_rungs(sweep: SweepDir, rows: list[dict[str, Any]]) -> None:
    """A search's columns, from its record: the last rung each configuration reached, its outcome, and the
    search metric at each decided rung (``rung0``, ``rung1``, ...; empty where it did not run that rung)."""
    record = sweep.search()
    if record is None:
        return
    decided = [r for r in record["rungs"] if r["decision"] is not None]
    for row in rows:
        i = row["task"]
        reached = [r["rung"] for r in record["rungs"] if i in r["tasks"]]
        row["rung"] = reached[-1] if reached else None
        row["outcome"] = _outcome(record, i)
        for r in decided:
            row[f"rung{r['rung']}"] = r["decision"]["values"].get(str(i))


def _outcome(record: dict[str, Any], index: int) -> str:
    """promoted (to a rung still running), stopped_early, completed, lost, or running."""
    for rung in reversed(record["rungs"]):
        if index not in rung["tasks"]:
            continue
        d = rung["decision"]
        if d is None:
            return "running"
        for outcome in ("stopped", "completed", "lost", "promoted"):
            if index in d[outcome]:
                return {"stopped": "stopped_early"}.get(outcome, outcome)
    return "running"


# Terminal table: (row key, header, digits, priority: the highest is left out first on a narrow terminal).
_HEAD = (("task", "#", 0, 0), ("model", "model", 0, 0), ("status", "status", 0, 3), ("params_M", "Mparams", 2, 2),
         ("epochs", "ep", 0, 2), ("best", "best", 4, 0), ("final", "final", 4, 1))
_END = (("img_s", "img/s", 0, 4), ("wall_min", "min", 1, 4))


def _table(rows: list[dict[str, Any]]) -> tuple[tuple[str, str, int, int], ...]:
    """(row key, header, digits, priority: the highest is left out first on a narrow terminal) of each column."""
    known = _known_columns()
    extra = tuple((k, known[k].header, known[k].digits, known[k].priority) for k in _columns(rows)
                  if k in known)
    per_second = (("img_s", f"{rows[0]['sample_word']}/s", *_END[0][2:]),) if rows and "sample_word" in rows[0] \
        else _END[:1]
    return (*_HEAD, *extra, *per_second, *_END[1:])


_STATUS_WORD = {"FINISHED": "done", "FAILED": "failed", "KILLED": "stopped", "RUNNING": "running",
                "SCHEDULED": "queued"}


def _cell(row: dict[str, Any], key: str, digits: int) -> str:
    if key == "status":
        if row.get("outcome") == "stopped_early":
            return "pruned"  # STOPPED_EARLY: FINISHED in MLflow, by the search's decision
        return _STATUS_WORD.get(row[key], str(row[key]).lower())
    text = _fmt(row.get(key), digits)
    if row.get(f"{key}_bound") and text:
        return f">={text}"  # no background event passed: the number of background events is a lower bound
    return text


def seed_groups(sweep: SweepDir, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs that differ only in ``optim.seed`` grouped: mean and sample std of their best metric, best first."""
    import numpy as np

    specs = sweep.run_specs()
    labels = sweep.labels
    groups: dict[str, list[dict[str, Any]]] = {}
    config_names: dict[str, str] = {}
    for row in rows:
        if row["best"] is None or not 0 <= row["task"] < len(specs):
            continue
        spec = specs[row["task"]].model_dump(mode="json")
        spec["optim"].pop("seed")
        spec.pop("description")
        key = json.dumps(spec, sort_keys=True)
        groups.setdefault(key, []).append(row)
        config_names.setdefault(key, " ".join(p for p in labels[row["task"]].split() if not p.startswith("seed=")))
    out = []
    for key, members in groups.items():
        values = np.array([m["best"] for m in members], dtype=float)
        out.append({"config": config_names[key], "n_seeds": len(members), "mean": float(values.mean()),
                    "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "tasks": sorted(m["task"] for m in members), "metric": members[0]["metric"]})
    from hpcvit.objectives import metric_mode

    maximise = not rows or metric_mode(rows[0]["metric"]) == "max"
    return sorted(out, key=lambda g: -g["mean"] if maximise else g["mean"])


def seed_table(sweep: SweepDir, rows: list[dict[str, Any]]) -> Table | None:
    """Mean +- std over seeds, when the sweep has more than one seed of some configuration."""
    groups = seed_groups(sweep, rows)
    if not any(g["n_seeds"] > 1 for g in groups):
        return None
    table = Table(title=f"{sweep.sweep_id}: best {groups[0]['metric']} over seeds (mean +- std)")
    for col in ("configuration", "seeds", "mean", "std", "tasks"):
        table.add_column(col, justify="left" if col in ("configuration", "tasks") else "right")
    for g in groups:
        table.add_row(g["config"], str(g["n_seeds"]), f"{g['mean']:.4f}", f"{g['std']:.4f}",
                      ",".join(map(str, g["tasks"])))
    return table


def compare_table(sweep: SweepDir, metric: str | None = None, rows: list[dict[str, Any]] | None = None,
                  width: int = 200) -> Table:
    from hpcvit.tables import Column, fit

    rows = compare_rows(sweep, metric) if rows is None else rows
    name = rows[0]["metric"] if rows else (metric or "metric")
    table = _table(rows)
    columns = [Column(header, numeric=key not in ("model", "status"), priority=prio)
               for key, header, _, prio in table]
    cells = [[_cell(r, key, digits) for key, _, digits, _ in table] for r in rows]
    return fit(f"{sweep.sweep_id}: runs by {name} (best and final epoch)", columns, cells, width)


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt in RECORD_FORMATS:
        return records_text(rows, fmt, None if rows else list(_columns(rows)))
    columns = _columns(rows)
    digits = {key: d for key, _, d, _ in _table(rows)}
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r, c, digits.get(c, 4)) if c != "status" else str(r[c]) for c in columns)
              + " |" for r in rows]
    return "\n".join(lines)


def overlay_runs(sweep: SweepDir) -> dict[str, Any]:
    """Each finished run's part of the sweep figure (the objective's ``overlay_data``), by run label."""
    import numpy as np

    from hpcvit.objectives import get_objective

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
            predictions = {k.removeprefix("val_"): data[k] for k in data.files if k.startswith("val_")}
        part = objective.overlay_data(task.path, predictions)
        if part is not None:
            runs[f"{task.index}: {labels[task.index] if task.index < len(labels) else ''}"] = part
    return runs


def plot_overlay(sweep: SweepDir, path: Any) -> Any:
    """The objective's sweep figure over every finished run (ROC curves, residuals, binned efficiencies)."""
    from pathlib import Path

    from hpcvit.objectives import get_objective
    from hpcvit.results.plots import OVERLAYS

    objective = get_objective(sweep.run_spec(0).data.task)
    runs = overlay_runs(sweep)
    if not runs:
        what = "no figure over runs" if objective.overlay is None else "no finished run with predictions"
        raise ValueError(f"{what} for a {objective.name} sweep in {sweep.sweep_id}")
    return OVERLAYS[objective.overlay](runs, Path(path), sweep.sweep_id)


def overlay_name(sweep: SweepDir) -> str:
    """File name of the sweep figure on the parent run (``roc_overlay.png``, ...)."""
    from hpcvit.objectives import get_objective

    return f"{get_objective(sweep.run_spec(0).data.task).overlay}_overlay.png"


def finalize_parent(sweep: SweepDir, all_completed: bool) -> None:
    """Once every task is final: the sweep's summary table and its figure over the runs on the parent run, then
    close it."""
    from hpcvit.tracking import mlflow_client

    m = sweep.manifest
    client = mlflow_client(m["tracking_uri"])
    parent = client.get_run(m["parent_run_id"])
    status = "FINISHED" if all_completed else "FAILED"
    if parent.data.tags.get(names.SUMMARY_TAG) != "logged":
        out = sweep.root / "summary"
        out.mkdir(exist_ok=True)
        rows = compare_rows(sweep)
        (out / "summary.csv").write_text(render(rows, "csv"))
        (out / "summary.md").write_text(render(rows, "markdown"))
        client.log_artifact(parent.info.run_id, str(out / "summary.csv"))
        client.log_artifact(parent.info.run_id, str(out / "summary.md"))
        if overlay_runs(sweep):
            png = plot_overlay(sweep, out / overlay_name(sweep))
            client.log_artifact(parent.info.run_id, str(png))
            client.log_artifact(parent.info.run_id, str(png.with_suffix(".pdf")))
        client.set_tag(parent.info.run_id, names.SUMMARY_TAG, "logged")
    if parent.info.status != status:
        client.set_terminated(parent.info.run_id, status)
