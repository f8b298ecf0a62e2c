"""The GSoC preprocessing against a plain numpy reference; statistics from the training split only."""

from __future__ import annotations

import numpy as np
import pytest

from hpcvit.data import build_datasets, split_indices
from hpcvit.data.parquet import write_jets
from hpcvit.data.preprocess import ChannelStats, apply, channel_stats
from hpcvit.config import DataSpec, PreprocessSpec


def reference(x: np.ndarray, train: np.ndarray, pre: PreprocessSpec, stats=None) -> tuple[np.ndarray, tuple]:
    """Straightforward float64 numpy version of the study's steps."""
    x = np.nan_to_num(np.array(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if pre.zero_suppress is not None:
        x = np.where(np.abs(x) < pre.zero_suppress, 0.0, x)
    if stats is None:
        mean = x[train].mean(axis=(0, 2, 3))
        std = x[train].std(axis=(0, 2, 3))
        std = np.where(std > 0, std, 1.0)
    else:
        mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
    if pre.zscore:
        x = (x - mean[None, :, None, None]) / std[None, :, None, None]
        if pre.clip_sigma is not None:
            x = np.clip(x, -pre.clip_sigma, pre.clip_sigma)
    if pre.minmax:
        lo = x.min(axis=(2, 3), keepdims=True)
        hi = x.max(axis=(2, 3), keepdims=True)
        x = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
    return x, (mean, std)


def dataset(tmp_path, n=40, size=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.exponential(2.0, size=(n, 3, size, size)) * (rng.random((n, 3, size, size)) < 0.4)
    x[rng.random(x.shape) < 0.05] = 5e-4  # below the zero-suppression threshold
    x[:, 1] *= 30.0  # channels on different scales
    x[3, 0, 1, 1], x[7, 2, 4, 4], x[9, 1, 0, 0] = np.nan, np.inf, -np.inf
    y = (np.arange(n) % 2).astype(np.float64)
    p = write_jets(tmp_path / "jets.parquet", x, {"y": y, "pt": rng.uniform(0, 1, n), "m0": np.zeros(n)})
    return p, x


@pytest.mark.parametrize("pre", [
    PreprocessSpec(),
    PreprocessSpec(zscore=False),
    PreprocessSpec(minmax=False),
    PreprocessSpec(zero_suppress=None, clip_sigma=None),
    PreprocessSpec(zero_suppress=0.5, clip_sigma=1.5, minmax=False),
], ids=["gsoc", "no-zscore", "no-minmax", "no-suppress-no-clip", "tight-clip"])
def test_matches_numpy_reference(tmp_path, pre):
    p, x = dataset(tmp_path)
    spec = DataSpec(format="parquet", nonfinite="zero", paths=[str(p)], preprocessing=pre, val_fraction=0.25, test_fraction=0.15)
    b = build_datasets(spec, tmp_path)
    tr, va, te = split_indices(len(x), spec)
    want, (mean, std) = reference(x, tr, pre)
    if pre.zscore:
        np.testing.assert_allclose(b.stats.mean, mean, rtol=1e-6)
        np.testing.assert_allclose(b.stats.std, std, rtol=1e-6)
    for ds, idx in ((b.train, tr), (b.val, va), (b.test, te)):
        got, _ = ds.arrays()
        np.testing.assert_allclose(got, want[idx], rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))
        # a sample read alone and one read in a batch are preprocessed identically
        np.testing.assert_array_equal(ds[2][0].numpy(), ds.__getitems__([5, 2])[1][0].numpy())


def test_statistics_come_from_the_training_split_only(tmp_path):
    p, x = dataset(tmp_path, n=30)
    spec = DataSpec(format="parquet", nonfinite="zero", paths=[str(p)], val_fraction=0.3)
    tr, va, _ = split_indices(len(x), spec)
    x[va] *= 1000.0  # validation samples on a wildly different scale must not move the statistics
    p = write_jets(tmp_path / "jets.parquet", x, {"y": (np.arange(30) % 2).astype(float), "pt": np.zeros(30),
                                                  "m0": np.zeros(30)})
    b = build_datasets(spec, tmp_path)
    _, (mean, std) = reference(x, tr, spec.preprocessing)
    np.testing.assert_allclose(b.stats.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(b.stats.std, std, rtol=1e-6)
    assert b.info["stats_from"] == "training split"


def test_checkpoint_stats_replace_computing_and_clip_at_500_sigma(tmp_path):
    p, x = dataset(tmp_path)
    stats = {"mean": [0.0, 0.0, 0.0], "std": [1e-3, 100.0, 1e-3]}  # pixels of ~2 in channels 0 and 2: 2000 sigma
    pre = PreprocessSpec(minmax=False)
    spec = DataSpec(format="parquet", nonfinite="zero", paths=[str(p)], preprocessing=pre)
    b = build_datasets(spec, tmp_path, stats=stats)
    assert b.info["stats_from"] == "checkpoint" and b.stats.to_dict() == stats
    tr, _, _ = split_indices(len(x), spec)
    got, _ = b.train.arrays()
    want, _ = reference(x, tr, pre, stats)
    np.testing.assert_allclose(got, want[tr], rtol=1e-5)
    assert got[:, 0].max() == 500.0 and got[:, 1].max() < 500.0


def test_channel_stats_independent_of_batching():
    rng = np.random.default_rng(4)
    x = (rng.normal(3.0, 2.0, size=(50, 2, 9, 9)) * (rng.random((50, 2, 9, 9)) < 0.5)).astype(np.float32)
    pre = PreprocessSpec()
    whole = channel_stats([x], pre)
    for size in (1, 7, 4096):
        parts = channel_stats((x[i:i + size] for i in range(0, 50, size)), pre)
        np.testing.assert_allclose(parts.mean, whole.mean, rtol=1e-12)
        np.testing.assert_allclose(parts.std, whole.std, rtol=1e-12)
    ref = np.where(np.abs(x.astype(np.float64)) < 1e-3, 0, x.astype(np.float64))
    np.testing.assert_allclose(whole.mean, ref.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(whole.std, ref.std(axis=(0, 2, 3)), rtol=1e-10)
    assert ChannelStats.from_dict(whole.to_dict()).to_dict() == whole.to_dict()


def test_constant_images_and_empty_channels():
    x = np.zeros((2, 2, 4, 4), np.float32)
    x[0, 1] = 7.0
    stats = channel_stats([x], PreprocessSpec())
    assert stats.std[0] == 1.0  # an all-zero channel does not divide by zero
    out = apply(x.copy(), PreprocessSpec(), stats)
    assert np.isfinite(out).all() and out.min() == 0.0 and out.max() == 0.0  # constant channels map to 0
