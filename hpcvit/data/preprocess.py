"""The GSoC ViT study's preprocessing: zero suppression, channel z-score, clipping, sample-wise min-max."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpcvit.spec import PreprocessSpec


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and standard deviation of the (zero-suppressed) training split."""

    mean: np.ndarray
    std: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> ChannelStats:
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], dtype=np.float64))


@dataclass(frozen=True)
class TargetScale:
    """Mean and standard deviation of a regression target over the training split: training fits the
    standardised target ``(y - mean) / std``; predictions are turned back into the target's units."""

    mean: float
    std: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> TargetScale:
        return cls(float(d["mean"]), float(d["std"]))

    @classmethod
    def of(cls, targets: np.ndarray) -> TargetScale:
        t = np.asarray(targets, dtype=np.float64)
        std = float(t.std())
        return cls(float(t.mean()), std if std > 0 else 1.0)


def channel_stats(batches, spec: PreprocessSpec) -> ChannelStats:
    """Mean/std per channel over an iterable of NCHW batches (the training split), in float64.

    Pixels are taken as training sees them before the z-score: NaN/inf set to 0, then zero-suppressed. Batches
    are merged with Chan's parallel formula (per-batch mean and sum of squared deviations), so the result is
    the population mean/std over all pixels whatever the batch size; batches are processed in float64 slices
    of at most ~32 MiB. A channel with zero spread gets std 1.
    """
    n_tot = 0
    mean = m2 = None
    for batch in batches:
        b = np.asarray(batch)
        if b.ndim != 4:
            raise ValueError(f"channel_stats expects NCHW batches, got shape {b.shape}")
        step = max(1, (32 << 20) // max(1, b[0].size * 8))
        for i in range(0, len(b), step):
            part = np.nan_to_num(b[i:i + step].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            if spec.zero_suppress is not None:
                part[np.abs(part) < spec.zero_suppress] = 0.0
            n = part.shape[0] * part.shape[2] * part.shape[3]
            if n == 0:
                continue
            m = part.mean(axis=(0, 2, 3))
            part -= m[None, :, None, None]
            np.square(part, out=part)
            s2 = part.sum(axis=(0, 2, 3))
            if mean is None:
                n_tot, mean, m2 = n, m, s2
            else:
                delta = m - mean
                total = n_tot + n
                mean = mean + delta * (n / total)
                m2 = m2 + s2 + delta * delta * (n_tot * n / total)
                n_tot = total
    if mean is None:
        raise ValueError("no training samples to compute channel statistics from")
    std = np.sqrt(np.maximum(m2 / n_tot, 0.0))
    return ChannelStats(mean, np.where(std > 0, std, 1.0))


def apply(x: np.ndarray, spec: PreprocessSpec, stats: ChannelStats | None) -> np.ndarray:
    """Preprocess an NCHW float batch in place and return it, in the study's order: NaN/inf pixels to 0,
    zero suppression (|x| < threshold -> 0), channel z-score with the training statistics, clipping at
    +-``clip_sigma`` (in standard deviations, so only after the z-score), and per-sample, per-channel min-max
    scaling to [0, 1] (a constant channel becomes 0). Without ``stats`` the z-score and clipping are skipped."""
    np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if spec.zero_suppress is not None:
        x[np.abs(x) < spec.zero_suppress] = 0.0
    if spec.zscore and stats is not None:
        x -= stats.mean.astype(np.float32)[None, :, None, None]
        x /= stats.std.astype(np.float32)[None, :, None, None]
        if spec.clip_sigma is not None:
            np.clip(x, -spec.clip_sigma, spec.clip_sigma, out=x)
    if spec.minmax:
        lo = x.min(axis=(2, 3), keepdims=True)
        span = x.max(axis=(2, 3), keepdims=True) - lo
        x -= lo
        x /= np.where(span > 0, span, 1.0)
    return x
