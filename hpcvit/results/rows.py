"""A sweep's runs as comparable rows, read from its MLflow child runs and its specs.

Every metric is named with its split: ``val_<m>`` is the best validation value over the epochs (the epoch
that ranks), ``val_<m>_last`` the last epoch's, ``test_<m>`` the test split's, measured once on the weights the
run kept (its best epoch by ``checkpoint.best_metric``). The objective's further columns are of the test split
when the sweep has one, else of validation at the best epoch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from hpcvit.ledger import SweepDir
from hpcvit.tracking import names


@dataclass(frozen=True)
class Col:
    """One column of the comparison."""

    key: str
    """Key of the rows (and of CSV/JSON records)."""
    header: str
    """Header in the terminal table."""
    digits: int = 4
    """Digits after the point of a float; -1: 4 significant digits (a swept value as it was written)."""
    priority: int = 0
    """The highest is left out first on a narrow terminal."""
    numeric: bool = True


@dataclass
class Comparison:
    """A sweep's rows, best first by :attr:`metric`, and the columns that show them."""

    sweep_id: str
    objective: str
    metric: str
    """What ranks the rows: ``val_<m>`` (best epoch) or ``test_<m>``."""
    rows: list[dict[str, Any]]
    columns: list[Col]
    swept: list[str] = field(default_factory=list)
    """The spec fields that differ between the runs (dotted), shown as columns."""
    failures: list[tuple[int, str]] = field(default_factory=list)
    """(task, first line of its error) of every failed task."""

    def ranked(self) -> list[dict[str, Any]]:
        """The rows that have a value of :attr:`metric`."""
        return [r for r in self.rows if _number(r.get(self.metric)) is not None]

    def records(self) -> list[dict[str, Any]]:
        """Rows as records: the shown columns first, then the rest (run ids, epochs, search columns)."""
        shown = [c.key for c in self.columns]
        return [{**{k: r.get(k) for k in shown}, **{f"{k}_is_bound": v for k, v in r["_bounds"].items()},
                 **{k: v for k, v in r.items() if k not in shown and k != "_bounds"}} for r in self.rows]

    def empty_reason(self) -> str | None:
        """Why no row has a value of the metric (None when some row has): the failed tasks' first error, or
        that no run has finished an epoch yet."""
        if self.ranked():
            return None
        if self.failures:
            task, error = self.failures[0]
            more = f" (and {len(self.failures) - 1} other failed task(s))" if len(self.failures) > 1 else ""
            return (f"{self.sweep_id}: no run has a {self.metric}; task {task} failed: {error}{more} "
                    f"(hpcvit logs {self.sweep_id} {task})")
        return f"{self.sweep_id}: no run has a {self.metric} yet (hpcvit status {self.sweep_id})"


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested spec -> ``{"optim.lr": 0.001}``, values kept as they are."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _flat_specs(sweep: SweepDir) -> list[dict[str, Any]]:
    return [_flat(s.model_dump(mode="json")) for s in sweep.run_specs()]


def swept_fields(sweep: SweepDir) -> list[str]:
    """Spec fields (dotted) whose value differs between the sweep's runs; the model name and the description
    are not among them (the model has its own column)."""
    flat = _flat_specs(sweep)
    keys = list(flat[0]) if flat else []
    for f in flat[1:]:
        keys += [k for k in f if k not in keys]
    return [k for k in keys if k not in ("description", "model.name", "name")
            and len({repr(f.get(k)) for f in flat}) > 1]


def check_metric_choice(objective: Any, metric: str) -> None:
    """``--metric``: ``val_<m>`` or ``test_<m>`` of a metric the sweep's objective reports."""
    valid = [m.name for m in objective.metrics]
    split, _, base = metric.partition("_")
    if split not in ("val", "test") or base not in valid:
        raise ValueError(f"--metric {metric}: not a metric of this {objective.name} sweep (one of "
                         f"{', '.join('val_' + v for v in valid)}, or test_ instead of val_)")


def _history(client: Any, run_id: str, name: str) -> list[tuple[int, float]]:
    return [(h.step, h.value) for h in sorted(client.get_metric_history(run_id, name), key=lambda h: h.step)]


def comparison(sweep: SweepDir, metric: str | None = None) -> Comparison:
    """The sweep's runs, one row per child run, best first by ``metric`` (default: the spec's
    ``checkpoint.best_metric``, or its task's default)."""
    from hpcvit.objectives import get_objective, metric_mode
    from hpcvit.tracking import child_runs, mlflow_client

    m = sweep.manifest
    specs = sweep.run_specs()
    objective = get_objective(specs[0].data.task)
    if metric:
        check_metric_choice(objective, metric)
    metric = metric or objective.primary_metric(specs[0].checkpoint.best_metric)[0]
    base = metric.partition("_")[2]
    maximise = metric_mode(base) == "max"
    has_test = any(s.data.test_fraction > 0 for s in specs)
    split = "test" if has_test else "val"
    extra = [c for c in objective.compare_columns if c.metric != base]
    swept = swept_fields(sweep)
    flat = _flat_specs(sweep)
    client = mlflow_client(m["tracking_uri"])
    rows = []
    for run in child_runs(m["tracking_uri"], m["experiment_id"], m["parent_run_id"]):
        rid, metrics = run.info.run_id, run.data.metrics
        index = int(run.data.tags.get(names.TASK_INDEX_TAG, -1))
        history = _history(client, rid, f"val_{base}")
        values = [v for _, v in history if not math.isnan(v)]
        best = (max(values) if maximise else min(values)) if values else None
        best_step = next((s for s, v in history if v == best), None)
        last_step = history[-1][0] if history else None
        wall = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 60000 if run.info.start_time \
            else None
        row: dict[str, Any] = {
            "task": index, "run": run.info.run_name, "model": run.data.tags.get(names.MODEL_TAG, ""),
            **{k: flat[index].get(k) if 0 <= index < len(flat) else None for k in swept},
            "status": run.info.status, "params_M": float(run.data.params.get("model.n_params", "nan")) / 1e6,
            "epochs": len(history), "best_epoch": best_step, f"val_{base}": best,
            f"val_{base}_last": history[-1][1] if history else None}
        if has_test:
            row[f"test_{base}"] = metrics.get(f"test_{base}")
        bounds: dict[str, bool] = {}
        for c in extra:
            name = f"{split}_{c.metric}"
            if split == "test" or best_step == last_step:
                row[name], bound = metrics.get(name), metrics.get(f"{name}_is_bound")
            else:  # validation at the best epoch, not the last one
                at = dict(_history(client, rid, name))
                row[name], bound = at.get(best_step), dict(_history(client, rid, f"{name}_is_bound")).get(best_step)
            bounds[name] = bool(bound) if c.bound else False
        rows.append({**row, "_bounds": bounds, "img_s": metrics.get("throughput_img_s"), "wall_min": wall,
                     "metric": metric, "run_id": rid})
    key = metric

    def order(r: dict[str, Any]) -> tuple[bool, float]:
        v = _number(r.get(key))
        return (v is None, 0.0 if v is None else -v if maximise else v)

    rows.sort(key=order)
    _add_rungs(sweep, rows)
    shown = _fold_kwargs(swept, rows)
    short = {k: k.rsplit(".", 1)[-1] for k in shown}
    ambiguous = {v for v in short.values() if list(short.values()).count(v) > 1}
    columns = [Col("task", "#", 0), Col("model", "model", 0, numeric=False),
               *(Col(k, k if short[k] in ambiguous else short[k], -1, 1, numeric=False) for k in shown),
               Col("status", "status", 0, 3, numeric=False), Col("params_M", "Mparams", 2, 2),
               Col("epochs", "ep", 0, 2), Col(f"val_{base}", f"val {base}", 4),
               *([Col(f"test_{base}", f"test {base}", 4)] if has_test else []),
               Col(f"val_{base}_last", "val last", 4, 2),
               *(Col(f"{split}_{c.metric}", f"{split} {c.header}", c.digits, c.priority) for c in extra),
               Col("img_s", f"{objective.sample_word}/s", 0, 4), Col("wall_min", "min", 1, 4)]
    return Comparison(sweep.sweep_id, objective.name, metric, rows, columns, swept, _failures(sweep))


KWARGS = "model.kwargs"


def _fold_kwargs(swept: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """The swept fields shown as columns: several swept model arguments (a zip of models, each with its own
    arguments, leaves most of them empty) are one ``kwargs`` column of ``name=value`` words that folds on a narrow
    terminal; the records keep each argument as its own key."""
    args = [k for k in swept if k.startswith(KWARGS + ".")]
    if len(args) < 2:
        return swept
    for row in rows:
        row[KWARGS] = " ".join(f"{k[len(KWARGS) + 1:]}={_word(row[k])}" for k in args if row.get(k) is not None)
    at = swept.index(args[0])
    return [*swept[:at], KWARGS, *(k for k in swept[at:] if k not in args)]


def _word(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else _fmt(value, -1)


def _failures(sweep: SweepDir) -> list[tuple[int, str]]:
    out = []
    for task in sweep.tasks():
        failed = task.failure()
        if failed is not None:
            out.append((task.index, str(failed.get("summary") or "").strip() or "(no message)"))
    return out


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


_STATUS_WORD = {"FINISHED": "done", "FAILED": "failed", "KILLED": "stopped", "RUNNING": "running",
                "SCHEDULED": "queued"}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return "inf" if math.isinf(value) else ""
        return f"{value:.4g}" if digits < 0 else f"{value:.{digits}f}"
    return str(value)


def cell(row: dict[str, Any], col: Col) -> str:
    if col.key == "status":
        if row.get("outcome") == "stopped_early":
            return "pruned"  # STOPPED_EARLY: FINISHED in MLflow, by the search's decision
        return _STATUS_WORD.get(row[col.key], str(row[col.key]).lower())
    text = _fmt(row.get(col.key), col.digits)
    if row.get("_bounds", {}).get(col.key) and text:
        return f">={text}"  # no background event passed: the number of background events is a lower bound
    return text
