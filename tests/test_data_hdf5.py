"""HDF5 electron/photon layout: multi-file data sets, chunked/compressed files, lazy reads, bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcvit.objectives.binary import ClassLabels
from hpcvit.data import build_datasets, split_indices
from hpcvit.data.hdf5 import HDF5Store
from hpcvit.data import DataError, ImageDataset
from hpcvit.data.formats import open_store
from hpcvit.config import DataSpec, PreprocessSpec

RAW = PreprocessSpec(zero_suppress=None, zscore=False, clip_sigma=None, minmax=False)


def write_h5(path: Path, x: np.ndarray, y: np.ndarray, **kw) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=x, **kw)
        f.create_dataset("y", data=y)
        f.create_dataset("pt", data=np.linspace(10, 90, len(y)))
    return path


def two_class_files(tmp_path: Path, n: int = 40, **kw) -> tuple[list[Path], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    xs, ys, paths = [], [], []
    for k, label in enumerate((0.0, 1.0)):  # one file per class, as published
        x = rng.gamma(1.0, 1.0, size=(n + 7 * k, 32, 32, 2)).astype(np.float32)
        y = np.full(len(x), label, dtype=np.float32)
        paths.append(write_h5(tmp_path / f"class{k}.h5", x, y, **kw))
        xs.append(x)
        ys.append(y)
    return paths, np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("kw", [{}, {"chunks": (16, 32, 32, 2), "compression": "lzf"},
                                {"chunks": (5, 32, 32, 2), "compression": "gzip"}],
                         ids=["contiguous", "lzf", "gzip"])
def test_multi_file_round_trip(tmp_path, kw):
    paths, x, y = two_class_files(tmp_path, **kw)
    store = HDF5Store(paths)
    assert store.n == len(x) and store.shape == (2, 32, 32) and store.file_rows == [40, 47]
    want = np.moveaxis(x, -1, 1)
    np.testing.assert_array_equal(store.read(np.arange(store.n)), want)
    rows = np.array([0, 3, 17, 39, 40, 41, 60, 86])  # across the file boundary, sparse within chunks
    np.testing.assert_array_equal(store.read(rows), want[rows])
    got = np.concatenate([xb.copy() for _, xb in store.iter_read(np.arange(5, 80), block=16)])
    np.testing.assert_array_equal(got, want[5:80])
    np.testing.assert_array_equal(store.column("y"), y)


def test_channel_selection_and_layouts(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 32, 32, 3)).astype(np.float32)
    p = write_h5(tmp_path / "a.h5", x, np.zeros(10, np.float32))
    store = HDF5Store([p], channels=[2, 0])
    np.testing.assert_array_equal(store.read(np.arange(10)), np.moveaxis(x, -1, 1)[:, [2, 0]])
    q = write_h5(tmp_path / "nchw.h5", np.moveaxis(x, -1, 1).copy(), np.zeros(10, np.float32))
    np.testing.assert_array_equal(HDF5Store([q]).read(np.arange(10)), np.moveaxis(x, -1, 1))
    with pytest.raises(DataError, match=r"a\.h5.*channels \[5\] out of range"):
        HDF5Store([p], channels=[5])


def test_dataset_lazy_pickle_and_batches(tmp_path):
    paths, x, y = two_class_files(tmp_path, chunks=(8, 32, 32, 2), compression="lzf")
    spec = DataSpec(format="hdf5", paths=[str(p) for p in paths], preprocessing=RAW, val_fraction=0.25)
    b = build_datasets(spec, tmp_path, targets=ClassLabels())
    tr, va, _ = split_indices(len(y), spec)
    assert len(b.train) == len(tr) and len(b.val) == len(va) and b.in_chans == 2 and b.img_size == 32
    assert b.info["class_balance"]["train"]["positive"] == int(y[tr].sum())
    img, target = b.train[3]
    assert img.dtype.is_floating_point and img.shape == (2, 32, 32) and target.shape == ()
    np.testing.assert_array_equal(img.numpy(), np.moveaxis(x[tr[3]], -1, 0))
    assert target.item() == y[tr[3]]
    batch = b.val.__getitems__([4, 1, 4, 0])  # unsorted, repeated (DistributedSampler padding)
    for (bi, bt), j in zip(batch, [4, 1, 4, 0]):
        np.testing.assert_array_equal(bi.numpy(), np.moveaxis(x[va[j]], -1, 0))
        assert bt.item() == y[va[j]]
    # a data set whose file is open pickles without the handle and reopens lazily
    clone = pickle.loads(pickle.dumps(b.train))
    assert clone.store._handles == {}
    np.testing.assert_array_equal(clone[3][0].numpy(), img.numpy())


def test_distributed_shards_are_disjoint_with_workers(tmp_path):
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    rng = np.random.default_rng(2)
    n = 64
    x = rng.normal(size=(n, 32, 32, 2)).astype(np.float32)
    ids = np.arange(n, dtype=np.float32)  # target = row id identifies each sample
    p = write_h5(tmp_path / "ids.h5", x, ids, chunks=(16, 32, 32, 2), compression="gzip")
    spec = DataSpec(format="hdf5", paths=[str(p)], task="regression", preprocessing=RAW, val_fraction=0.25)
    b = build_datasets(spec, tmp_path)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(b.train, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = DataLoader(b.train, batch_size=5, sampler=sampler, num_workers=2)
        got_ids, got_x = [], []
        for xb, yb in loader:
            assert xb.dtype == torch.float32 and xb.shape[1:] == (2, 32, 32)
            got_ids.append(yb.numpy())
            got_x.append(xb.numpy())
        got_ids = np.concatenate(got_ids).astype(int)
        np.testing.assert_array_equal(np.concatenate(got_x), np.moveaxis(x[got_ids], -1, 1))
        seen.append(set(got_ids.tolist()))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(b.train.rows.tolist())


def test_chunk_cache_holds_several_chunks(tmp_path):
    # 256 rows x 8 KiB = 2 MiB chunks: a 1 MiB cache could not keep one, so every per-sample read would
    # decompress a whole chunk; the store raises the cache to at least 4 chunks (this file's 4 chunks)
    x = np.random.default_rng(3).normal(size=(1024, 32, 32, 2)).astype(np.float32)
    p = write_h5(tmp_path / "big.h5", x, np.zeros(1024, np.float32), chunks=(256, 32, 32, 2), compression="lzf")
    store = HDF5Store([p], chunk_cache_mb=1)
    f = store._handle(0).file
    assert store._handle(0).mapped is None  # compressed: read through h5py and its chunk cache
    assert f.id.get_access_plist().get_cache()[2] >= 4 * 256 * 32 * 32 * 2 * 4
    for r in np.random.default_rng(0).permutation(1024)[:300]:
        np.testing.assert_array_equal(store.read(np.array([r]))[0], np.moveaxis(x[r], -1, 0))


def test_bad_files_give_one_line_errors(tmp_path):
    paths, x, y = two_class_files(tmp_path, n=20)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(paths[0].read_bytes()[:3000])
    with pytest.raises(DataError, match=r"truncated\.h5: not a readable HDF5 file") as e:
        HDF5Store([paths[1], truncated])
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"class0\.h5: no data set 'images'"):
        HDF5Store([paths[0]], input_key="images")
    other = write_h5(tmp_path / "other.h5", np.zeros((3, 16, 16, 2), np.float32), np.zeros(3, np.float32))
    with pytest.raises(DataError, match=r"other\.h5: X images are \(16, 16, 2\)"):
        HDF5Store([paths[0], other])
    labels = write_h5(tmp_path / "labels.h5", np.zeros((3, 32, 32, 2), np.float32), np.array([0, 2, 1], np.float32))
    spec = DataSpec(format="hdf5", paths=[str(labels)])
    with pytest.raises(DataError, match=r"labels\.h5 \(row 1\): binary target 'y' is 2, not 0/1"):
        build_datasets(spec, tmp_path, targets=ClassLabels())
    spec = DataSpec(format="hdf5", paths=[str(labels)], positive_value=2.0, val_fraction=0.34, min_per_class=0)
    b = build_datasets(spec, tmp_path, targets=ClassLabels())
    assert sorted(b.train.targets.tolist() + b.val.targets.tolist()) == [0.0, 0.0, 1.0]


def test_cuts_and_open_store_on_hdf5(tmp_path):
    paths, x, y = two_class_files(tmp_path, n=20)
    spec = DataSpec(format="hdf5", paths=[str(p) for p in paths], cuts={"pt": [30, 70]}, preprocessing=RAW)
    pt = open_store(spec, paths).column("pt")
    keep = np.flatnonzero((pt >= 30) & (pt < 70))
    b = build_datasets(spec, tmp_path)
    assert b.info["n_selected"] == len(keep)
    got = np.sort(np.concatenate([b.train.rows, b.val.rows]))
    np.testing.assert_array_equal(got, keep)
    assert isinstance(b.train, ImageDataset)


@pytest.mark.parametrize("kw, mapped", [
    ({}, True),                                                     # contiguous
    ({"chunks": (16, 32, 32, 2)}, True),                            # chunks of whole rows, uncompressed
    ({"chunks": (16, 32, 32, 2), "compression": "gzip"}, False),    # filtered: through h5py
    ({"chunks": (16, 16, 32, 2)}, False),                           # chunks that split rows
    ({"dtype": ">f4"}, False),                                      # not the machine's byte order
    ({"chunks": (16, 32, 32, 2), "shuffle": True}, False),
], ids=["contiguous", "row-chunks", "gzip", "split-rows", "big-endian", "shuffle"])
def test_rows_stored_as_is_are_read_through_a_map_and_others_through_h5py(tmp_path, kw, mapped):
    """Both ways give h5py's values for random, bulk (with gaps) and channel-selected reads."""
    x = np.random.default_rng(4).normal(size=(70, 32, 32, 2)).astype(np.float32)
    x[5, 3, 4, 1] = np.nan
    p = write_h5(tmp_path / "x.h5", x, np.zeros(70, np.float32), **kw)
    want = np.moveaxis(x, -1, 1)
    store = HDF5Store([p])
    assert (store._handle(0).mapped is not None) == mapped
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(70, 23, replace=False))
    np.testing.assert_array_equal(store.read(rows), want[rows])
    np.testing.assert_array_equal(store.read(np.array([69])), want[[69]])
    for block in (1, 16, 40, 256):
        got = np.concatenate([xb.copy() for _, xb in store.iter_read(rows, block=block)])
        np.testing.assert_array_equal(got, want[rows])
        got = np.concatenate([xb.copy() for _, xb in store.iter_read(np.arange(70), block=block)])
        np.testing.assert_array_equal(got, want)
    store.close()
    assert store.read(np.array([0, 1]), np.empty((2, 2, 32, 32), np.float32)).shape == (2, 2, 32, 32)
    sub = HDF5Store([p], channels=[1])
    np.testing.assert_array_equal(sub.read(rows), want[rows][:, [1]])
    again = pickle.loads(pickle.dumps(store))  # a worker maps the file itself
    np.testing.assert_array_equal(again.read(rows), want[rows])


def test_a_user_block_is_read_through_h5py(tmp_path):
    x = np.arange(6 * 8 * 8 * 2, dtype=np.float32).reshape(6, 8, 8, 2)
    p = tmp_path / "ub.h5"
    with h5py.File(p, "w", userblock_size=512) as f:
        f.create_dataset("X", data=x)
        f.create_dataset("y", data=np.zeros(6, np.float32))
    store = HDF5Store([p])
    assert store._handle(0).mapped is None
    np.testing.assert_array_equal(store.read(np.arange(6)), np.moveaxis(x, -1, 1))


@pytest.mark.parametrize("row, layout", [
    ((32, 32, 2), "NHWC"), ((2, 32, 32), "NCHW"), ((12, 12, 13), "NHWC"), ((13, 12, 12), "NCHW"),
    ((20, 30, 4), "NHWC"), ((4, 20, 30), "NCHW"), ((8, 8, 8), None),
])
def test_auto_layout_takes_the_square_pair_as_the_image(tmp_path, row, layout):
    x = np.arange(3 * int(np.prod(row)), dtype=np.float32).reshape(3, *row)
    p = write_h5(tmp_path / "x.h5", x, np.zeros(3, np.float32))
    if layout is None:
        with pytest.raises(DataError, match=r"x\.h5: X images are \(8, 8, 8\).*set data\.layout") as e:
            HDF5Store([p])
        assert e.value.field == "data.layout" and "\n" not in str(e.value)
        np.testing.assert_array_equal(HDF5Store([p], layout="NHWC").read(np.arange(3)), np.moveaxis(x, -1, 1))
        return
    want = np.moveaxis(x, -1, 1) if layout == "NHWC" else x
    np.testing.assert_array_equal(HDF5Store([p]).read(np.arange(3)), want)
