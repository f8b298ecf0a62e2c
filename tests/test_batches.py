"""The training loader's whole batches equal the per-sample DataLoader's batches bit for bit (rows, order, last
partial batch, resume mid-epoch), with and without worker processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from hpcvit.data import build_datasets
from hpcvit.data.batches import BatchLoader
from hpcvit.data.memmap import MemmapStore, gather_into
from hpcvit.data.parquet import write_jets
from hpcvit.config import DataSpec
from hpcvit.training.sampler import ShardSampler


def make_file(path: Path, n: int = 151, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.exponential(1.0, size=(n, 3, 10, 10)) * (rng.random((n, 3, 10, 10)) < 0.5)
    return write_jets(path, x, {"y": (np.arange(n) % 2).astype(float), "pt": rng.uniform(0, 100, n),
                                "m0": rng.uniform(0, 10, n)})


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("batches")
    p = make_file(tmp / "jets.parquet")
    base = DataSpec(format="parquet", paths=[str(p)], val_fraction=0.2, cuts={"pt": [3, 97]})
    cache = str(tmp / "cache")
    return {"cache": build_datasets(base.model_copy(update={"cache_dir": cache}), tmp),
            "raw-cache": build_datasets(base.model_copy(update={"cache_dir": cache, "cache_preprocessed": False}), tmp),
            "direct": build_datasets(base, tmp),
            "scalars": build_datasets(base.model_copy(update={"cache_dir": cache, "scalar_inputs": ["m0"]}), tmp)}


def per_sample_batches(dataset, sampler, batch_size: int) -> list:
    """What a plain DataLoader yields: per-sample reads, then the default collate."""
    return list(DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=0))


def bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().numpy().view(np.uint8)


def assert_same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for (xg, yg), (xw, yw) in zip(got, want):
        parts_g = list(xg) if isinstance(xg, (list, tuple)) else [xg]
        parts_w = list(xw) if isinstance(xw, (list, tuple)) else [xw]
        assert len(parts_g) == len(parts_w)
        for a, b in zip(parts_g + [yg], parts_w + [yw]):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(bits(a), bits(b))


def clone(batch) -> tuple:
    x, y = batch
    return (x.clone() if torch.is_tensor(x) else tuple(p.clone() for p in x)), y.clone()


def held_copies(loader) -> list:
    """Every batch of ``loader``, copied only once the next one was taken (a consumer holding two at once)."""
    out, prev = [], None
    for batch in loader:
        if prev is not None:
            out.append(clone(prev))
        prev = batch
    out.append(clone(prev))
    return out


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("which", ["cache", "raw-cache", "direct", "scalars"])
def test_batches_equal_the_per_sample_path_including_a_resumed_epoch(bundles, which, workers):
    ds = bundles[which].train
    for start in (0, 3):
        sampler = ShardSampler(len(ds), rank=1, world=2, batch_size=4, seed=5)
        sampler.set_epoch(2, start)
        want = per_sample_batches(ds, sampler, 4)
        assert len(want[-1][1]) < 4  # the last batch is partial
        got = held_copies(BatchLoader(ds, sampler, 4, workers, generator=torch.Generator().manual_seed(1)))
        assert_same(got, want)
        batches = list(torch.utils.data.BatchSampler(sampler, 4, False))
        for (x, _), idx in zip(got, batches):  # each sample read alone, in order
            image = x[0] if isinstance(x, tuple) else x
            alone = [ds[i][0] for i in idx]
            np.testing.assert_array_equal(image.numpy(), np.stack([a[0] if isinstance(a, tuple) else a for a in alone]))

@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_continues_the_uninterrupted_batches(bundles, workers):
    ds = bundles["cache"].train
    sampler = ShardSampler(len(ds), rank=0, world=1, batch_size=5, seed=3)
    sampler.set_epoch(1, 0)
    whole = held_copies(BatchLoader(ds, sampler, 5, workers))
    sampler.set_epoch(1, 4)
    assert_same(held_copies(BatchLoader(ds, sampler, 5, workers)), whole[4:])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_subset_in_order_like_evaluation(bundles, workers):
    ds = bundles["scalars"].val
    indices = list(range(1, len(ds), 2))
    want = per_sample_batches(Subset(ds, indices), None, 3)
    assert_same(held_copies(BatchLoader(ds, None, 3, workers, indices=np.array(indices))), want)


def test_gather_into_any_order_and_out_of_range(tmp_path):
    x = np.arange(7 * 2 * 3 * 3, dtype=np.float32).reshape(7, 2, 3, 3)
    np.save(tmp_path / "x.npy", x)
    mapping = MemmapStore(tmp_path / "x.npy").view(slice(None))
    for rows in ([4, 1, 1, 6], [2, 3, 4], [0], []):
        out = np.full((len(rows), 2, 3, 3), -1, np.float32)
        assert gather_into(mapping, np.array(rows, dtype=np.int64), out) is out
        np.testing.assert_array_equal(out, x[rows])
    with pytest.raises(IndexError, match="out of range"):
        gather_into(mapping, np.array([1, 7]), np.empty((2, 2, 3, 3), np.float32))


def test_one_persistent_loader_over_epochs_and_an_abandoned_one(bundles):
    ds = bundles["cache"].train
    sampler = ShardSampler(len(ds), rank=0, world=1, batch_size=4, seed=9)
    loader = BatchLoader(ds, sampler, 4, 2, persistent=True)
    prev = last = None  # the last batch of the epoch before stays held while the next one starts
    for epoch, start, stop_after in ((0, 0, None), (1, 2, 3), (2, 0, None), (3, 5, None)):
        sampler.set_epoch(epoch, start)
        want = per_sample_batches(ds, sampler, 4)
        got, it = [], iter(loader)
        for k, batch in enumerate(it):
            if prev is not None:
                got.append(clone(prev))
            prev = batch
            if stop_after is not None and k + 1 == stop_after:  # a stop mid-epoch: the rest never fetched
                break
        del it
        got.append(clone(prev))
        if last is not None:
            assert_same(got[:1], [last])  # the held batch of the previous epoch is unchanged
            got = got[1:]
        assert_same(got, want[:stop_after] if stop_after else want)
        last = got[-1]


def test_a_process_holding_a_persistent_loader_exits(tmp_path):
    # its workers ignore SIGTERM, as the trainer's do: multiprocessing's exit handler alone would wait for ever
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from hpcvit.data.batches import BatchLoader
        from hpcvit.data.dataset import ImageDataset
        from hpcvit.data.memmap import MemmapStore
        from hpcvit.training.stop import ignore_in_worker
        np.save(sys.argv[1], np.zeros((40, 1, 4, 4), np.float32))
        ds = ImageDataset(MemmapStore(sys.argv[1]), np.arange(40), np.zeros(40, np.float32))
        loader = BatchLoader(ds, None, 4, 2, persistent=True, worker_init_fn=ignore_in_worker)
        assert sum(len(y) for _, y in loader) == 40
    """)
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.npy")], timeout=120, check=True)
