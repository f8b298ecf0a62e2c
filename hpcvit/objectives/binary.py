"""Binary classification of images (signal vs background): one logit, ROC-AUC and background rejection."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcvit.objectives.base import split_for_figures
from hpcvit.objectives.image import ImageObjective
from hpcvit.objectives.registry import Column, Metric, register_objective

if TYPE_CHECKING:
    import torch

    from hpcvit.config import DataSpec

REJECTION_EFFICIENCIES = (0.3, 0.5)
"""Signal efficiencies at which the background rejection 1/eps_B is reported."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def rejection_at(y: np.ndarray, score: np.ndarray, signal_eff: float) -> float:
    """Background rejection 1/eps_B at signal efficiency ``signal_eff``.

    When no background event passes, eps_B is bounded by one event: the rejection is reported as the
    number of background events (a lower bound), never as infinity.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, score)
    n_bkg = int(np.sum(y < 0.5))
    eps_b = max(float(np.interp(signal_eff, tpr, fpr)), 1.0 / max(n_bkg, 1))
    return 1.0 / eps_b


def classifier_metrics(out: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Loss (binary cross-entropy of the logits), accuracy at 0.5, ROC-AUC and the rejections, from logits and
    0/1 labels. ROC-AUC is NaN (and the rejections absent) unless both classes are present."""
    out, y = np.asarray(out, np.float64), np.asarray(y, np.float64)
    p = _sigmoid(out)
    eps = 1e-12
    loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
    metrics = {"loss": loss, "accuracy": float(np.mean((p > 0.5) == (y > 0.5)))}
    if 0 < y.sum() < len(y):
        from sklearn.metrics import roc_auc_score

        metrics["roc_auc"] = float(roc_auc_score(y, out))
        for eff in REJECTION_EFFICIENCIES:
            metrics[f"rejection_at_eff_{eff}"] = rejection_at(y, out, eff)
            # 1 where no background event passed: the number of background events is a lower bound
            metrics[f"rejection_at_eff_{eff}_is_bound"] = float(
                metrics[f"rejection_at_eff_{eff}"] >= int(np.sum(y < 0.5)))
    else:
        metrics["roc_auc"] = float("nan")
    return metrics


def both_classes(y: np.ndarray) -> bool:
    return bool(0 < y.sum() < len(y))


class ClassLabels:
    """0/1 labels: the positive class as 1, given as 0/1 already or by ``data.positive_value``; each split
    summarised by its class counts; training and validation need ``data.min_per_class`` of each class."""

    info_key = "class_balance"

    def make(self, raw: np.ndarray, spec: DataSpec, where: Any = None) -> np.ndarray:
        from hpcvit.data import DataError
        from hpcvit.data.targets import nonfinite_error

        raw = np.asarray(raw, dtype=np.float64)
        if spec.positive_value is not None:  # every other value, NaN included, is the negative class
            labels = (raw == spec.positive_value).astype(np.float32)
            if len(raw) and not labels.any():
                values = np.unique(raw[np.isfinite(raw)])
                raise DataError(f"no selected sample has {spec.target_key} = {spec.positive_value:g} (values: "
                                f"{', '.join(f'{v:g}' for v in values[:8])}{' ...' if len(values) > 8 else ''})",
                                field="data.positive_value")
            return labels
        problem = nonfinite_error(raw, spec, where)
        if problem is not None:
            raise problem
        odd = np.flatnonzero((raw != 0) & (raw != 1))
        if len(odd):
            values = np.unique(raw)
            at = where(int(odd[0])) if where else f"row {int(odd[0])}"
            raise DataError(f"{at}: binary target {spec.target_key!r} is {raw[odd[0]]:g}, not 0/1 (values: "
                            f"{', '.join(f'{v:g}' for v in values[:8])}{' ...' if len(values) > 8 else ''}); "
                            "set data.positive_value", field="data.target_key")
        return raw.astype(np.float32)

    def describe(self, targets: np.ndarray, parts: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, pos in parts.items():
            t = targets[pos]
            n_pos = int(t.sum())
            out[name] = {"n": int(len(t)), "positive": n_pos, "negative": int(len(t) - n_pos),
                         "positive_fraction": round(n_pos / len(t), 6) if len(t) else None}
        return out

    def check(self, summary: dict[str, Any], spec: DataSpec, where: Path) -> None:
        """Both classes in the training and validation splits, at least ``data.min_per_class`` of each (a test
        split with one class gets no test ROC, and says so in the log)."""
        from hpcvit.data import DataError

        for split, b in summary.items():
            if b["n"] == 0 or split == "test":
                continue
            minority = min(b["positive"], b["negative"])
            if minority < spec.min_per_class:
                which = "positive" if b["positive"] <= b["negative"] else "negative"
                raise DataError(f"{where}: the {split} split has {b['positive']} positive and {b['negative']} "
                                f"negative samples: fewer {which} than data.min_per_class = {spec.min_per_class} "
                                "(check data.paths, data.cuts, data.max_samples and data.positive_value)",
                                field="data.max_samples" if spec.max_samples else "data.paths")


@register_objective
class BinaryObjective(ImageObjective):
    """Signal (1) vs background (0) from one logit per image, trained with binary cross-entropy."""

    name = "binary"
    metrics = (
        Metric("roc_auc", "max", "area under the ROC curve"),
        Metric("accuracy", "max", "fraction classified right at probability 0.5"),
        Metric("loss", "min", "binary cross-entropy of the logits"),
        *(Metric(f"rejection_at_eff_{e}", "max", f"background rejection 1/eps_B at signal efficiency {e}")
          for e in REJECTION_EFFICIENCIES),
    )
    flags = tuple(f"rejection_at_eff_{e}_is_bound" for e in REJECTION_EFFICIENCIES)
    default_metric = "roc_auc"
    artifacts_dir = "roc"
    compare_columns = (Column("rej@0.3", "1/eB@.3", "rejection_at_eff_0.3", 1, 1, bound=True),
                       Column("rej@0.5", "1/eB@.5", "rejection_at_eff_0.5", 1, 3, bound=True))

    @classmethod
    def target_rule(cls) -> ClassLabels:
        return ClassLabels()

    @cached_property
    def loss_fn(self) -> Any:
        from torch import nn

        return nn.BCEWithLogitsLoss()

    def target(self, y: torch.Tensor, device: torch.device) -> torch.Tensor:
        y = y.to(device, non_blocking=True).view(-1, 1)
        smoothing = self.spec.optim.label_smoothing
        return y * (1 - smoothing) + 0.5 * smoothing if smoothing else y

    def metric_values(self, out: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return classifier_metrics(out, y)

    @classmethod
    def score(cls, out: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return classifier_metrics(out, y)

    def prediction_columns(self, out: np.ndarray) -> dict[str, np.ndarray]:
        """``score``: the signal probability; ``logit``: the raw output."""
        return {"score": _sigmoid(np.asarray(out, np.float64)), "logit": np.asarray(out, np.float64)}

    def facts(self, fresh_model: Any) -> dict[str, Any]:
        balance = self.data.info[ClassLabels.info_key]
        return {**super().facts(fresh_model), "data.positive_fraction_train": balance["train"]["positive_fraction"]}

    def write_artifacts(self, folder: Path, predictions: dict[str, dict[str, np.ndarray]], label: str) -> list[Path]:
        """The ROC curve (CSV, PNG, PDF) and the score histograms of the test split, or of the validation split
        when the test split is absent or holds one class."""
        from hpcvit.objectives.figures import write_roc_artifacts

        found = split_for_figures(predictions, both_classes)
        if found is None:
            return []
        p = predictions[found[0]]
        return write_roc_artifacts(folder, p["y"], p["out"], label, found[1])

    overlay = "roc"

    @classmethod
    def overlay_data(cls, folder: Path, predictions: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        y, out = predictions.get("y"), predictions.get("out")
        return (y, out) if y is not None and out is not None and both_classes(y) else None
