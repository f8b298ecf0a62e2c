"""Regression of one value per image (e.g. a particle's mass): trained on the standardised target, reported
in the target's own units (MAE, MRE)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hpcvit.objectives.base import split_for_figures
from hpcvit.objectives.image import ImageObjective
from hpcvit.objectives.registry import Column, Metric, register_objective

if TYPE_CHECKING:
    import torch

    from hpcvit.data.preprocess import TargetScale
    from hpcvit.data.targets import Values


def regression_metrics(out: np.ndarray, y: np.ndarray, target_std: float = 1.0) -> dict[str, float]:
    """``loss``: the MSE of the standardised target (what training minimises, ``target_std`` the training
    split's); ``mae`` in the target's units; ``mre`` and ``resolution`` (half the central 68 % interval of
    (prediction - target) / |target|, robust to tails) over the nonzero targets."""
    out, y = np.asarray(out, np.float64), np.asarray(y, np.float64)
    err = out - y
    nonzero = np.abs(y) > 0
    rel = err[nonzero] / np.abs(y[nonzero])
    return {"loss": float(np.mean(err**2)) / target_std**2, "mae": float(np.mean(np.abs(err))),
            "mre": float(np.mean(np.abs(rel))) if len(rel) else float("nan"),
            "resolution": float(np.diff(np.quantile(rel, [0.16, 0.84]))[0] / 2) if len(rel) else float("nan")}


@register_objective
class RegressionObjective(ImageObjective):
    """One value per image, fitted by mean squared error of the target standardised with the training split's
    mean and std (kept in every checkpoint); predictions and metrics in the target's own units."""

    name = "regression"
    metrics = (
        Metric("mae", "min", "mean absolute error, in the target's units"),
        Metric("mre", "min", "mean relative error |prediction - target| / |target| (nonzero targets)"),
        Metric("resolution", "min", "relative resolution: half the central 68 % interval of (prediction - target) "
               "/ |target|"),
        Metric("loss", "min", "mean squared error of the standardised target"),
    )
    default_metric = "mae"
    artifacts_dir = "residuals"
    compare_columns = (Column("mae", "MAE", "mae", 3, 1), Column("mre", "MRE", "mre", 3, 1),
                       Column("resolution", "res68", "resolution", 3, 2))
    state_keys: ClassVar[tuple[str, ...]] = (*ImageObjective.state_keys, "target_scale")
    overlay = "residuals"
    scale: TargetScale

    @classmethod
    def target_rule(cls) -> Values:
        from hpcvit.data.targets import Values

        return Values()

    def fit(self, saved: dict[str, Any]) -> None:
        from hpcvit.data.preprocess import TargetScale

        self.scale = (TargetScale.from_dict(saved["target_scale"]) if saved.get("target_scale")
                      else TargetScale.of(self.data.train.targets))
        self.data.info["target_scale"] = self.scale.to_dict()

    @cached_property
    def loss_fn(self) -> Any:
        from torch import nn

        return nn.MSELoss()

    def target(self, y: torch.Tensor, device: torch.device) -> torch.Tensor:
        y = y.to(device, non_blocking=True).view(-1, 1)
        return (y - self.scale.mean) / self.scale.std

    def to_units(self, outs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [o.double() * self.scale.std + self.scale.mean for o in outs]

    def metric_values(self, out: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return regression_metrics(out, y, self.scale.std)

    @classmethod
    def score(cls, out: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """The metrics of predictions in the target's units (the loss unscaled)."""
        return regression_metrics(out, y)

    def restore(self, saved: dict[str, Any]) -> None:
        from hpcvit.data.preprocess import TargetScale

        super().restore(saved)
        self.scale = TargetScale.from_dict(saved["target_scale"])

    def prediction_columns(self, out: np.ndarray) -> dict[str, np.ndarray]:
        """``prediction``: the value in the target's units (the standardised output scaled back)."""
        return {"prediction": np.asarray(out, np.float64) * self.scale.std + self.scale.mean}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "target_scale": self.scale.to_dict()}

    def write_artifacts(self, folder: Path, predictions: dict[str, dict[str, np.ndarray]], label: str) -> list[Path]:
        """Predicted against true values and the residuals' distribution, of the test split (else validation)."""
        from hpcvit.objectives.figures import write_residual_artifacts

        found = split_for_figures(predictions, len)
        if found is None:
            return []
        p = predictions[found[0]]
        return write_residual_artifacts(folder, p["y"], p["out"], label, found[1], self.spec.data.target_key)

    @classmethod
    def overlay_data(cls, folder: Path, predictions: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        y, out = predictions.get("y"), predictions.get("out")
        return (y, out) if y is not None and out is not None and len(y) else None
