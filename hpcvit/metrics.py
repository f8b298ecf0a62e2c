"""Evaluation metrics: ROC-AUC and background rejection for taggers, MAE/MRE for regression."""

from __future__ import annotations

import numpy as np

# scikit-learn is imported where it is used: it costs a second and a half of every trainer's start-up.


def primary_metric(task: str, choice: str = "auto") -> tuple[str, str]:
    """(metric name, ``max`` or ``min``) that picks the best epoch: ``choice``, or by the task for ``auto``."""
    if choice == "auto":
        choice = "val_roc_auc" if task == "binary" else "val_mae"
    return choice, ("max" if choice in ("val_roc_auc", "val_accuracy") else "min")


def is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None or np.isnan(best):
        return not np.isnan(value)
    return value > best if mode == "max" else value < best


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


def evaluate_predictions(out: np.ndarray, y: np.ndarray, task: str, target_std: float = 1.0) -> dict[str, float]:
    """Metrics from model outputs (logits for ``binary``; predictions in the target's units for a regression)
    and targets. A regression's ``loss`` is the MSE of the standardised target (what training minimises,
    ``target_std`` the training split's); ``mae`` and ``mre`` are in the target's units."""
    out, y = np.asarray(out, np.float64), np.asarray(y, np.float64)
    if task == "binary":
        p = _sigmoid(out)
        eps = 1e-12
        loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
        metrics = {"loss": loss, "accuracy": float(np.mean((p > 0.5) == (y > 0.5)))}
        if 0 < y.sum() < len(y):
            from sklearn.metrics import roc_auc_score

            metrics["roc_auc"] = float(roc_auc_score(y, out))
            for eff in (0.3, 0.5):
                metrics[f"rejection_at_eff_{eff}"] = rejection_at(y, out, eff)
                # 1 where no background event passed: the number of background events is a lower bound
                metrics[f"rejection_at_eff_{eff}_is_bound"] = float(
                    metrics[f"rejection_at_eff_{eff}"] >= int(np.sum(y < 0.5)))
        else:
            metrics["roc_auc"] = float("nan")
        return metrics
    err = out - y
    nonzero = np.abs(y) > 0
    return {"loss": float(np.mean(err**2)) / target_std**2, "mae": float(np.mean(np.abs(err))),
            "mre": float(np.mean(np.abs(err[nonzero]) / np.abs(y[nonzero]))) if nonzero.any() else float("nan")}
