"""The data a user brings: NaN pixels, corrupt blocks, one class, each refused with one line naming where."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpcvit.objectives.binary import ClassLabels
from hpcvit.data import DataError, build_datasets
from hpcvit.data.parquet import write_jets
from hpcvit.config import DataSpec
from tests.test_data_hdf5 import write_h5


def _jets(path: Path, n: int = 40, nan_row: int | None = None, row_group_size: int = 1) -> Path:
    rng = np.random.default_rng(1)
    x = rng.random((n, 3, 8, 8))
    if nan_row is not None:
        x[nan_row, 1, 2, 2] = np.nan
        x[nan_row, 1, 3, 3] = np.inf
    return write_jets(path, x, {"y": np.arange(n) % 2, "pt": np.full(n, 50.0)}, row_group_size=row_group_size)


@pytest.mark.parametrize("cache", [False, True])
def test_nan_pixels_are_an_error_naming_file_row_and_count(tmp_path: Path, cache: bool) -> None:
    path = _jets(tmp_path / "nan.parquet", nan_row=7)
    spec = DataSpec(format="parquet", paths=[str(path)], val_fraction=0.25, split_seed=3,
                    cache_dir=str(tmp_path / "cache") if cache else None)
    train = set(build_datasets(spec.model_copy(update={"nonfinite": "zero"}), tmp_path, targets=ClassLabels()).train.rows.tolist())
    assert 7 in train, "the fixture puts the bad row into the training split (read by the statistics pass)"
    with pytest.raises(DataError) as info:
        build_datasets(spec, tmp_path, targets=ClassLabels())
    message = str(info.value)
    assert "nan.parquet" in message and ("(row 7)" in message or "(sample 7 of the data set)" in message), message
    assert "2 non-finite pixel(s)" in message and "data.nonfinite: error" in message and "\n" not in message
    assert info.value.field == "data.nonfinite"


def test_without_statistics_a_nan_is_found_when_its_batch_is_read(tmp_path: Path) -> None:
    path = _jets(tmp_path / "nan.parquet", nan_row=7)
    spec = DataSpec(format="parquet", paths=[str(path)], val_fraction=0.25, preprocessing={"zscore": False})
    bundle = build_datasets(spec, tmp_path, targets=ClassLabels())
    split = bundle.train if 7 in bundle.train.rows else bundle.val
    with pytest.raises(DataError, match=r"nan\.parquet \(row 7\): 2 non-finite pixel"):
        split.__getitems__(list(range(len(split))))
    assert np.isfinite(build_datasets(spec.model_copy(update={"nonfinite": "zero"}), tmp_path, targets=ClassLabels()).train.arrays()[0]).all()


def test_a_corrupt_block_of_huge_values_makes_the_statistics_absurd(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((64, 16, 16, 2)).astype(np.float32)
    x[8:16] = 3.4e38  # a decompressed chunk of garbage: finite, but no detector's energy
    path = write_h5(tmp_path / "bad.h5", x, (np.arange(64) % 2).astype(np.float32))
    spec = DataSpec(format="hdf5", paths=[str(path)], val_fraction=0.25, split_seed=1)
    with pytest.raises(DataError, match=r"bad\.h5: channel 0 statistics of the training split are absurd"):
        build_datasets(spec, tmp_path, targets=ClassLabels())


def test_one_class_left_is_an_error_before_training(tmp_path: Path) -> None:
    photons = write_h5(tmp_path / "photon.h5", np.ones((50, 8, 8, 2), np.float32), np.zeros(50, np.float32))
    electrons = write_h5(tmp_path / "electron.h5", np.ones((50, 8, 8, 2), np.float32), np.ones(50, np.float32))
    spec = DataSpec(format="hdf5", paths=[str(photons), str(electrons)], cuts={"y": [None, 0.5]})
    with pytest.raises(DataError, match=r"photon\.h5: the train split has 0 positive and \d+ negative samples") as info:
        build_datasets(spec, tmp_path, targets=ClassLabels())
    assert info.value.field == "data.paths"


def test_max_samples_takes_from_each_file_so_one_class_per_file_keeps_both(tmp_path: Path) -> None:
    photons = write_h5(tmp_path / "photon.h5", np.ones((60, 8, 8, 2), np.float32), np.zeros(60, np.float32))
    electrons = write_h5(tmp_path / "electron.h5", np.ones((30, 8, 8, 2), np.float32), np.ones(30, np.float32))
    spec = DataSpec(format="hdf5", paths=[str(photons), str(electrons)], max_samples=40)
    bundle = build_datasets(spec, tmp_path, targets=ClassLabels())
    files = [(f["path"].rsplit("/", 1)[-1], f["selected"]) for f in bundle.info["files"]]
    assert files == [("photon.h5", 27), ("electron.h5", 13)], "40 in proportion 60:30, largest remainder first"
    assert bundle.info["class_balance"]["train"]["positive"] > 0 and bundle.info["class_balance"]["val"]["positive"] > 0
    rows = np.sort(np.concatenate([bundle.train.rows, bundle.val.rows]))
    assert list(rows[:27]) == list(range(27)) and list(rows[27:]) == list(range(60, 73)), "the first of each file"
