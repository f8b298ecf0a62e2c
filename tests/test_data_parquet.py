"""Parquet jet-image layouts: one-row and ragged row groups, mass regression columns, cuts, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hpcvit.data import build_datasets
from hpcvit.data.parquet import ParquetStore, dense_to_nested, jets_table, nested_to_dense, write_jets
from hpcvit.data import DataError
from hpcvit.config import DataSpec, PreprocessSpec

RAW = PreprocessSpec(zero_suppress=None, zscore=False, clip_sigma=None, minmax=False)


def jets(n: int, c: int = 3, size: int = 16, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.exponential(1.0, size=(n, c, size, size)) * (rng.random((n, c, size, size)) < 0.3)
    return x, {"y": (np.arange(n) % 2).astype(np.float64), "pt": rng.uniform(0, 150, n), "m0": rng.uniform(0, 200, n)}


def write_ragged(path: Path, x: np.ndarray, scalars: dict[str, np.ndarray], sizes: list[int], key: str = "X_jets"):
    table = jets_table(x, scalars, key)
    assert sum(sizes) == len(x)
    with pq.ParquetWriter(path, table.schema, compression="snappy") as w:
        pos = 0
        for s in sizes:
            w.write_table(table.slice(pos, s), row_group_size=s)
            pos += s
    assert pq.ParquetFile(path).metadata.num_row_groups == len(sizes)
    return path


def test_nested_round_trip_is_exact():
    x, _ = jets(5, c=3, size=7)
    arr = dense_to_nested(x)
    assert arr.type == pa.list_(pa.list_(pa.list_(pa.float64())))
    assert np.array(arr.to_pylist()).shape == (5, 3, 7, 7)
    out = np.empty((5, 3, 7, 7), np.float32)
    nested_to_dense(arr, (3, 7, 7), None, out)
    np.testing.assert_array_equal(out, x.astype(np.float32))
    sub = np.empty((3, 2, 7, 7), np.float32)  # a sliced array (non-zero offsets) and channel selection
    nested_to_dense(arr.slice(1, 3), (3, 7, 7), [2, 0], sub)
    np.testing.assert_array_equal(sub, x[1:4][:, [2, 0]].astype(np.float32))


def test_one_row_per_row_group_published_layout(tmp_path):
    x, s = jets(37, size=125)
    p = write_jets(tmp_path / "qg.parquet", x, s)  # one row group per jet, as the CMS converter writes
    assert pq.ParquetFile(p).metadata.num_row_groups == 37
    store = ParquetStore([p], "X")  # the default input key finds X_jets
    assert store.n == 37 and store.shape == (3, 125, 125)
    want = x.astype(np.float32)
    np.testing.assert_array_equal(store.read(np.arange(37)), want)
    np.testing.assert_array_equal(store.read(np.array([0, 5, 36])), want[[0, 5, 36]])
    rows, got = [], []
    for r, xb in store.iter_read(np.array([1, 2, 3, 10, 11, 30]), block=4):
        rows.append(r)
        got.append(xb.copy())
    np.testing.assert_array_equal(np.concatenate(rows), [1, 2, 3, 10, 11, 30])
    np.testing.assert_array_equal(np.concatenate(got), want[[1, 2, 3, 10, 11, 30]])
    np.testing.assert_array_equal(store.column("pt"), s["pt"])


@pytest.mark.parametrize("sizes", [[1, 3, 1, 7, 2, 8, 1], [23]], ids=["ragged", "single"])
def test_ragged_row_groups_and_multiple_files(tmp_path, sizes):
    x1, s1 = jets(23, seed=1)
    x2, s2 = jets(5, seed=2)
    p1 = write_ragged(tmp_path / "a.parquet", x1, s1, sizes)
    p2 = write_jets(tmp_path / "b.parquet", x2, s2, row_group_size=2)
    store = ParquetStore([p1, p2], "X_jets")
    want = np.concatenate([x1, x2]).astype(np.float32)
    rows = np.array([0, 2, 3, 4, 11, 12, 20, 22, 23, 26, 27])
    np.testing.assert_array_equal(store.read(rows), want[rows])
    for block in (1, 4, 64):
        got = np.concatenate([xb.copy() for _, xb in store.iter_read(rows, block=block)])
        np.testing.assert_array_equal(got, want[rows])
    spec = DataSpec(format="parquet", paths=[str(p1), str(p2)], preprocessing=RAW)
    b = build_datasets(spec, tmp_path)
    xa, ya = b.train.arrays()
    np.testing.assert_array_equal(xa, want[b.train.rows])
    assert b.info["files"][1]["rows"] == 5


def test_mass_regression_layout_channels_target_and_cuts(tmp_path):
    x, _ = jets(30, c=8, size=125, seed=4)
    rng = np.random.default_rng(5)
    scalars = {"m": rng.uniform(0, 2, 30), "pt": rng.uniform(0, 150, 30), "ieta": rng.uniform(-3, 3, 30),
               "iphi": rng.uniform(0, 6, 30)}
    p = write_jets(tmp_path / "top_gun_opendata_0.parquet", x, scalars, image_column="X_jet")
    spec = DataSpec(format="parquet", paths=[str(p)], input_key="X_jet", target_key="m", task="regression",
                    channels=[0, 1, 2, 3], cuts={"pt": [20, 100], "abs(ieta)": [None, 1.4]}, preprocessing=RAW,
                    val_fraction=0.3)
    keep = np.flatnonzero((scalars["pt"] >= 20) & (scalars["pt"] < 100) & (np.abs(scalars["ieta"]) < 1.4))
    assert 3 <= len(keep) < 30
    b = build_datasets(spec, tmp_path)
    assert b.in_chans == 4 and b.img_size == 125 and b.info["n_selected"] == len(keep)
    assert "target_stats" in b.info
    rows = np.sort(np.concatenate([b.train.rows, b.val.rows]))
    np.testing.assert_array_equal(rows, keep)
    img, target = b.val[0]
    r = b.val.rows[0]
    np.testing.assert_array_equal(img.numpy(), x[r, :4].astype(np.float32))
    assert target.item() == pytest.approx(scalars["m"][r], rel=1e-6)


def test_nan_inf_and_null_pixels_are_read_and_cleaned(tmp_path):
    x, s = jets(6, size=8)
    x[1, 0, 2, 3] = np.nan
    x[2, 1, 0, 0] = np.inf
    x[3, 2, 7, 7] = -np.inf
    n, c, h, w = x.shape
    flat = x.reshape(-1)
    mask = np.zeros(flat.size, bool)
    mask[4 * c * h * w + 5] = True  # a null pixel in jet 4
    values = pa.array(flat, mask=mask)
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, flat.size + 1, w, dtype=np.int32)), values)
    mid = pa.ListArray.from_arrays(pa.array(np.arange(0, n * c * h + 1, h, dtype=np.int32)), inner)
    outer = pa.ListArray.from_arrays(pa.array(np.arange(0, n * c + 1, c, dtype=np.int32)), mid)
    p = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"X_jets": outer, **{k: pa.array(v) for k, v in s.items()}}), p, row_group_size=1)
    raw = ParquetStore([p]).read(np.arange(n))
    assert np.isnan(raw[1, 0, 2, 3]) and raw[2, 1, 0, 0] == np.inf and raw[3, 2, 7, 7] == -np.inf
    assert np.isnan(raw.reshape(n, -1)[4, 5])
    spec = DataSpec(nonfinite="zero", format="parquet", paths=[str(p)], val_fraction=0.5)  # GSoC preprocessing on
    b = build_datasets(spec, tmp_path)
    for ds in (b.train, b.val):
        xa, _ = ds.arrays()
        assert np.isfinite(xa).all() and xa.min() >= 0 and xa.max() <= 1
    assert np.isfinite(b.stats.mean).all() and np.isfinite(b.stats.std).all()


def test_bad_row_group_is_named(tmp_path):
    x, s = jets(6, size=16)
    good = jets_table(x, s)
    bad = jets_table(np.zeros((1, 3, 15, 16)), {k: v[:1] for k, v in s.items()})  # 15 rows instead of 16
    p = tmp_path / "bad.parquet"
    with pq.ParquetWriter(p, good.schema) as w:
        w.write_table(good.slice(0, 3), row_group_size=1)
        w.write_table(bad, row_group_size=1)  # row group 3
        w.write_table(good.slice(3, 3), row_group_size=1)
    store = ParquetStore([p])
    np.testing.assert_array_equal(store.read(np.array([0, 2, 4])), x[[0, 2, 3]].astype(np.float32))
    with pytest.raises(DataError, match=r"bad\.parquet: row group 3: X_jets .*row list of length 15, expected 16"):
        store.read(np.array([3]))
    with pytest.raises(DataError, match=r"bad\.parquet: row group 3: .*row 3 of the file"):
        list(store.iter_read(np.arange(7), block=256))
    spec = DataSpec(format="parquet", paths=[str(p)], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"bad\.parquet: row group 3"):
        build_datasets(spec, tmp_path)
    assert not list((tmp_path / "cache").glob("raw-*"))  # nothing half-built is left behind
    assert not list((tmp_path / "cache").glob(".raw-*"))


def test_truncated_and_wrong_files(tmp_path):
    x, s = jets(4, size=16)
    p = write_jets(tmp_path / "ok.parquet", x, s)
    cut = tmp_path / "truncated.parquet"
    cut.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"truncated\.parquet: not a readable Parquet file") as e:
        ParquetStore([p, cut])
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"ok\.parquet: no image column 'images' \(has: X_jets, y, pt, m0\)"):
        ParquetStore([p], "images")
    with pytest.raises(DataError, match=r"ok\.parquet: row group 0: y: .*type double"):
        ParquetStore([p], "y")
    other = write_jets(tmp_path / "other.parquet", jets(2, size=8)[0], {k: v[:2] for k, v in s.items()})
    with pytest.raises(DataError, match=r"other\.parquet: row group 0: X_jets images are \(3, 8, 8\)"):
        ParquetStore([p, other])
    spec = DataSpec(format="parquet", paths=[str(p)], cuts={"eta": [-1, 1]})
    with pytest.raises(DataError, match=r"ok\.parquet: no scalar column 'eta'"):
        build_datasets(spec, tmp_path)


def test_bulk_read_of_small_and_large_row_groups_with_gaps(tmp_path):
    """Groups below and above the block, one-row groups between them, rows skipped inside and across groups:
    the bulk path yields the rows asked for, in order, never more than a block at once."""
    sizes = [1, 1, 40, 30, 1, 25, 2]
    x, s = jets(sum(sizes), size=8, seed=5)
    p = write_ragged(tmp_path / "mixed.parquet", x, s, sizes)
    store = ParquetStore([p], "X_jets")
    want = x.astype(np.float32)
    rng = np.random.default_rng(0)
    for rows in (np.arange(len(x)), np.sort(rng.choice(len(x), 37, replace=False)), np.array([2, 41, 42, 71, 99])):
        for block in (1, 8, 32, 256):
            got_rows, got = [], []
            for r, xb in store.iter_read(rows, block=block):
                assert len(r) == len(xb) <= block
                got_rows.append(r.copy())
                got.append(xb.copy())
            np.testing.assert_array_equal(np.concatenate(got_rows), rows)
            np.testing.assert_array_equal(np.concatenate(got), want[rows])
            np.testing.assert_array_equal(store.read(rows), want[rows])
    sub = ParquetStore([p], "X_jets", channels=[2, 0])
    got = np.concatenate([xb.copy() for _, xb in sub.iter_read(np.arange(len(x)), block=16)])
    np.testing.assert_array_equal(got, want[:, [2, 0]])


def test_bad_row_inside_a_large_row_group_is_named(tmp_path):
    x, s = jets(19, size=16)
    good = jets_table(x, s)
    bad = jets_table(np.zeros((1, 3, 16, 15)), {k: v[:1] for k, v in s.items()})  # 15 pixels instead of 16
    p = tmp_path / "big.parquet"
    with pq.ParquetWriter(p, good.schema) as w:
        w.write_table(good.slice(0, 2), row_group_size=2)  # row group 0
        w.write_table(pa.concat_tables([good.slice(2, 7), bad, good.slice(9, 10)]), row_group_size=18)
    store = ParquetStore([p])
    assert store.n == 20
    np.testing.assert_array_equal(store.read(np.array([0, 1])), x[[0, 1]].astype(np.float32))
    for block in (4, 256):
        with pytest.raises(DataError, match=r"big\.parquet: row group 1: X_jets \(row 7 of the group, row 9 of "
                                            r"the file\): pixel list of length 15, expected 16"):
            list(store.iter_read(np.arange(20), block=block))
    with pytest.raises(DataError, match=r"row group 1: X_jets \(row 7 of the group"):
        list(store.iter_read(np.array([0, 3, 8, 19]), block=4))  # row 8 shares a batch with the bad row
    rows = np.array([0, 3, 15, 19])  # no batch of 4 holding one of these holds the bad row
    got = np.concatenate([xb.copy() for _, xb in store.iter_read(rows, block=4)])
    np.testing.assert_array_equal(got, x[[0, 3, 14, 18]].astype(np.float32))
