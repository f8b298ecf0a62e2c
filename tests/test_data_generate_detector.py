"""The electron/photon and A -> gamma gamma generators: published layouts, reproducible for a seed whatever the
number of workers, and the physics they claim."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcvit.objectives.binary import ClassLabels
from hpcvit.data import build_datasets
from hpcvit.data.commands import main
from hpcvit.data.generate_diphoton import generate_diphoton, opening_angle_mass
from hpcvit.data.generate_egamma import generate_egamma
from hpcvit.data.parquet import ParquetStore
from hpcvit.data.showers import phi_width
from hpcvit.config import DataSpec


def _read(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for p in paths:
        with h5py.File(p) as f:
            xs.append(f["X"][:])
            ys.append(f["y"][:])
    return np.concatenate(xs), np.concatenate(ys)


def test_electron_photon_files_in_the_published_layout_reproducible_and_physical(tmp_path: Path) -> None:
    one = generate_egamma(120, tmp_path / "a", seed=5, workers=1, shard_size=40)
    two = generate_egamma(120, tmp_path / "b", seed=5, workers=2, shard_size=40)
    other = generate_egamma(120, tmp_path / "c", seed=6, workers=1, shard_size=40)
    xa, ya = _read(one["paths"])
    xb, _ = _read(two["paths"])
    assert xa.shape == (240, 32, 32, 2) and xa.dtype == np.float32 and sorted(set(ya.tolist())) == [0.0, 1.0]
    assert np.array_equal(xa, xb), "the output must not depend on the number of workers"
    assert not np.array_equal(xa, _read(other["paths"])[0])
    assert Path(one["paths"][0]).name.startswith("SinglePhotonPt50") and Path(one["paths"][1]).name.startswith(
        "SingleElectronPt50")
    energy = xa[..., 0].sum(axis=(1, 2)) / np.cosh(0.0)
    assert 40 < np.median(energy) < 110, "50 GeV pT in |eta| < 1.4: 50-108 GeV of energy, some outside the crop"
    assert 0.15 < one["photon_conversion_fraction"] < 0.6
    peak = np.unravel_index(np.argmax(xa[0, ..., 0]), (32, 32))
    assert abs(peak[0] - 16) <= 1 and abs(peak[1] - 16) <= 1, "cropped around the most energetic crystal"
    width = phi_width(xa[..., 0])
    assert width[ya == 0].std() > 0 and width[ya == 1].std() > 0
    # the files are a data set hpcvit trains on
    spec = DataSpec(format="hdf5", paths=one["paths"], val_fraction=0.25)
    bundle = build_datasets(spec, tmp_path, targets=ClassLabels())
    assert bundle.in_chans == 2 and bundle.img_size == 32 and bundle.info["class_balance"]["val"]["positive"] > 0


def test_diphoton_mass_images_in_the_x_jet_layout(tmp_path: Path) -> None:
    a = generate_diphoton(30, tmp_path / "a.parquet", seed=3, workers=1, shard_size=10)
    b = generate_diphoton(30, tmp_path / "b.parquet", seed=3, workers=2, shard_size=10)
    sa, sb = ParquetStore([Path(a["path"])], "X_jet"), ParquetStore([Path(b["path"])], "X_jet")
    xa, xb = sa.read(np.arange(30)), sb.read(np.arange(30))
    assert xa.shape == (30, 8, 125, 125) and np.array_equal(xa, xb)
    assert {"m", "pt", "eta", "phi", "ieta", "iphi"} <= set(sa.scalar_columns())
    m, pt = sa.column("m"), sa.column("pt")
    assert (0.1 <= m).all() and (m <= 1.6).all() and (20 <= pt).all() and (pt <= 100).all()
    ecal = xa[:, 3].sum(axis=(1, 2))
    assert np.all(ecal > 0.5 * pt), "the photons' energy is in the ECAL channel"
    est, merged = opening_angle_mass(xa[:, 3], sa.column("eta"))
    assert est.shape == (30,) and merged.dtype == bool
    spec = DataSpec(format="parquet", paths=[a["path"]], input_key="X_jet", target_key="m", task="regression",
                    channels=[0, 1, 2, 3], cuts={"pt": [20, 100]})
    assert build_datasets(spec, tmp_path).in_chans == 4


@pytest.mark.parametrize("process", ["electron-vs-photon", "diphoton-mass"])
def test_the_cli_writes_them(tmp_path: Path, process: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / ("eg" if process == "electron-vs-photon" else "dp.parquet")
    assert main(["generate", "--process", process, "-n", "20", "-o", str(out), "--workers", "1",
                 "--shard-size", "10"]) == 0
    assert "wrote" in capsys.readouterr().out and out.exists()
