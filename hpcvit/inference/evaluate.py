"""A trained run scored on labelled files: its metrics with percentile bootstrap intervals, and its figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpcvit.data.store import DataError

from hpcvit.objectives.figures import BOOTSTRAP as RESAMPLES  # the figures' legend gives the same interval


def targets(run: Any, predictions: Any) -> np.ndarray:
    """The files' targets as the run's objective reads them (its target rule on ``data.target_key``)."""
    spec = run.spec.data
    column = predictions.columns.get(spec.target_key)
    if column is None:
        raise DataError(f"{predictions.columns['file'][0] if len(predictions.columns['file']) else 'the files'}: no "
                        f"target column {spec.target_key!r} (evaluate needs the labels; predict does not)",
                        field="data.target_key")
    from hpcvit.data.targets import Values

    rule = run.objective().target_rule() or Values()
    return rule.make(column, spec)


def intervals(metric_values: Any, out: np.ndarray, y: np.ndarray, level: float = 0.95, n: int = RESAMPLES,
              seed: int = 0, stratify: bool = False) -> dict[str, tuple[float, float, float]]:
    """Each metric's value on all samples and its percentile bootstrap interval (resampling samples; within each
    class when ``stratify``, so every resample has both)."""
    whole = metric_values(out, y)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y > 0.5), np.flatnonzero(y <= 0.5)] if stratify else [np.arange(len(y))]
    draws: dict[str, list[float]] = {k: [] for k in whole}
    for _ in range(n):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups if len(g)])
        for k, v in metric_values(out[idx], y[idx]).items():
            if k in draws:
                draws[k].append(v)
    q = ((1 - level) / 2, 1 - (1 - level) / 2)
    out_ = {}
    for k, v in whole.items():
        finite = np.asarray([d for d in draws[k] if np.isfinite(d)], dtype=np.float64)
        lo, hi = np.quantile(finite, q) if len(finite) else (float("nan"), float("nan"))
        out_[k] = (float(v), float(lo), float(hi))
    return out_


def evaluate(run: Any, predictions: Any, figures: Path | None = None
             ) -> tuple[dict[str, tuple[float, float, float]], list[Path], list[str]]:
    """Metrics of ``predictions`` (from :func:`hpcvit.inference.predict.predict`) against the files' targets, with
    95 % intervals; with ``figures``, the objective's figures of them written there. Returns (metrics, figure
    files, notes: why a metric or the figures are missing)."""
    import torch

    objective = run.objective()
    y = targets(run, predictions).astype(np.float64)
    units = objective.to_units([torch.from_numpy(predictions.raw)])[0].numpy().astype(np.float64)
    classes = bool(np.isin(y, (0.0, 1.0)).all())  # class labels: every resample keeps both classes
    def metric_values(out: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return {k: v for k, v in objective.metric_values(out, y).items() if k not in objective.flags}

    found = intervals(metric_values, units, y, stratify=classes)
    notes = []
    undefined = [k for k, (v, _, _) in found.items() if not np.isfinite(v)]
    if undefined:
        kinds = np.unique(y)
        why = (f"all {len(y)} samples are of one class (y={kinds[0]:g})" if classes and len(kinds) == 1
               else "they are not defined on these samples")
        notes.append(f"{', '.join(undefined)}: no value, {why}")
    written: list[Path] = []
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        objective.spec = run.spec
        written = objective.write_artifacts(figures, {"files": {"out": units, "y": y}},
                                            f"{run.spec.model.name} ({run.ref})")
        if not written:
            notes.append(f"no figures written to {figures}: {notes[0].split(': ', 1)[1] if notes else 'none apply'}")
    return found, written, notes
