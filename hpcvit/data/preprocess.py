"""The GSoC ViT study's preprocessing: zero suppression, channel z-score, clipping, sample-wise min-max."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hpcvit.data.store import DataError, rows_per
from hpcvit.config import PreprocessSpec

ABSURD = 1e15
"""A channel mean or standard deviation beyond this is no detector's energy or time: a corrupt block."""


def check_finite(x: np.ndarray, rows: np.ndarray, where: Callable[[int], str], policy: str) -> None:
    """``data.nonfinite: error``: raise naming the file and row of the first image of ``x`` (rows ``rows``)
    holding a NaN or infinite pixel, and how many there are; ``zero`` lets them through (to become 0)."""
    if policy != "error" or np.isfinite(x).all():
        return
    per_image = (~np.isfinite(x)).reshape(len(x), -1).sum(axis=1)
    first = int(np.flatnonzero(per_image)[0])
    raise DataError(f"{where(int(rows[first]))}: {int(per_image[first])} non-finite pixel(s) ({int(per_image.sum())} "
                    f"in {int((per_image > 0).sum())} of the {len(x)} images read with it); data.nonfinite: error "
                    "(set data.nonfinite: zero to train with them as 0)", field="data.nonfinite")


def check_stats(stats: ChannelStats, where: str) -> ChannelStats:
    """Refuse channel statistics that are not finite or absurdly large (a corrupt chunk of +-3.4e38)."""
    for c, (m, s) in enumerate(zip(stats.mean, stats.std)):
        if not (np.isfinite(m) and np.isfinite(s)) or abs(m) > ABSURD or s > ABSURD:
            raise DataError(f"{where}: channel {c} statistics of the training split are absurd (mean {m:.3g}, std "
                            f"{s:.3g}): a corrupt block in the data? (hpcvit data inspect --check finds it)",
                            field="data.paths")
    return stats


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


@dataclass(frozen=True)
class ScalarScale:
    """Per-column mean and std of the scalar inputs over the training split."""

    mean: list[float]
    std: list[float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> ScalarScale:
        return cls([float(v) for v in d["mean"]], [float(v) for v in d["std"]])

    @classmethod
    def of(cls, values: np.ndarray) -> ScalarScale:
        std = values.std(axis=0)
        return cls(values.mean(axis=0).tolist(), np.where(std > 0, std, 1.0).tolist())

    def apply(self, values: np.ndarray) -> np.ndarray:
        return ((values - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)


def stats_block(sample_shape: tuple[int, ...]) -> int:
    """Images per slice of :func:`channel_stats`: about 32 MiB in float64 (at least one)."""
    return rows_per(32, sample_shape, itemsize=8)


def channel_stats(batches, spec: PreprocessSpec) -> ChannelStats:
    """Mean/std per channel over an iterable of NCHW batches (the training split), in float64.

    Pixels are taken as training sees them before the z-score: NaN/inf set to 0, then zero-suppressed. Batches
    are merged with Chan's parallel formula (per-batch mean and sum of squared deviations), so the result is
    the population mean/std over all pixels whatever the batch size; batches are processed in float64 slices
    of :func:`stats_block` images (a batch of at most that many is one slice) in one reused buffer. A channel
    with zero spread gets std 1.
    """
    n_tot = 0
    mean = m2 = None
    buf = spare = None  # one slice in float64 and its scratch space, reused: no allocation per slice
    for batch in batches:
        b = np.asarray(batch)
        if b.ndim != 4:
            raise ValueError(f"channel_stats expects NCHW batches, got shape {b.shape}")
        step = stats_block(b.shape[1:])
        rows = min(step, len(b))
        if buf is None or buf.shape[1:] != b.shape[1:] or len(buf) < rows:
            buf = np.empty((rows, *b.shape[1:]), dtype=np.float64)
            spare = np.empty_like(buf)
        for i in range(0, len(b), step):
            src = b[i:i + step]
            part, scratch = buf[:len(src)], spare[:len(src)]
            np.copyto(part, src, casting="unsafe")
            np.nan_to_num(part, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            if spec.zero_suppress is not None:
                part[np.abs(part, out=scratch) < spec.zero_suppress] = 0.0
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
