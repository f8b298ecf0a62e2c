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


def channel_stats(batches, spec: PreprocessSpec) -> ChannelStats:
    """Mean/std per channel over an iterable of NCHW float batches, accumulated in float64."""
    total = sq = None
    count = 0
    for batch in batches:
        b = np.asarray(batch, dtype=np.float64)
        if spec.zero_suppress is not None:
            b = np.where(np.abs(b) < spec.zero_suppress, 0.0, b)
        s, s2 = b.sum(axis=(0, 2, 3)), (b * b).sum(axis=(0, 2, 3))
        total, sq = (s, s2) if total is None else (total + s, sq + s2)
        count += b.shape[0] * b.shape[2] * b.shape[3]
    if total is None:
        raise ValueError("no training samples to compute channel statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean * mean, 0.0))
    return ChannelStats(mean, np.where(std > 0, std, 1.0))


def apply(x: np.ndarray, spec: PreprocessSpec, stats: ChannelStats | None) -> np.ndarray:
    """Preprocess an NCHW float32 batch in place and return it. NaN/inf pixels become 0."""
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
