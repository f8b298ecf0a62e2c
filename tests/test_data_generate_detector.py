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
    same = [np.array_equal(xa[k, 5], xa[k, 6]) and np.array_equal(xa[k, 6], xa[k, 7]) for k in range(30)]
    assert np.mean(same) < 0.3, "soft tracks bend between the pixel layers: the three layers differ"
    ecal_t = xa[:, 3].reshape(30, 25, 5, 25, 5).sum(axis=(2, 4))
    hcal_t = xa[:, 4].reshape(30, 25, 5, 25, 5).sum(axis=(2, 4))
    assert np.std(hcal_t[ecal_t > 1] / ecal_t[ecal_t > 1]) > 1e-3, "HCAL is not a fixed fraction of the ECAL"
    import pyarrow.parquet as pq

    meta = pq.read_schema(a["path"]).metadata
    assert b"simplified" in b"".join(meta.values()), "the metadata says what is simplified"
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


def test_charged_tracks_follow_their_circle_and_arrive_late_by_their_extra_path() -> None:
    import math

    from hpcvit.data import showers

    pt = 2.0  # GeV: a radius of 1.75 m in 3.8 T
    rho = showers.bending_radius(pt)
    for charge in (1, -1):
        dphi = showers.track_dphi(0.0, showers.R_ECAL, pt, charge)
        assert dphi == pytest.approx(-charge * math.asin(showers.R_ECAL / (2 * rho)), abs=2e-4)
    assert math.isnan(showers.track_dphi(0.0, showers.R_ECAL, 0.5, 1)), "a 0.5 GeV track curls up before the ECAL"
    rng = np.random.default_rng(0)
    legs = []
    while len(legs) != 2:  # a converted photon: both legs, bent apart
        legs = showers.photon_path(rng, 4.0, 0.0, 1.0)
    for leg in legs:
        arc = 2 * showers.bending_radius(leg.energy) * math.asin(
            min(showers.R_ECAL / (2 * showers.bending_radius(leg.energy)), 1.0))  # were it from the vertex
        assert 0 < leg.delay_ns <= (arc - showers.R_ECAL) / showers.C_M_PER_NS + 1e-6
        assert leg.origin_m > 0 and np.sign(leg.dphi) == -leg.charge


def test_generated_showers_separate_for_physical_reasons() -> None:
    """Electrons spread along phi (brem, bending with the momentum they keep) more than unconverted photons;
    conversions spread most; no class is wider in eta (the field bends in phi only); tail crystals are not
    multiples of one energy spot; the time channel carries the collision's spread and the resolution."""
    from sklearn.metrics import roc_auc_score

    from hpcvit.data import showers
    from hpcvit.data.generate_egamma import simulate

    rng = np.random.default_rng(7)
    xg, facts = simulate(0, 600, rng)
    xe, _ = simulate(1, 600, rng)
    unconverted = ~facts["converted"]
    pg, pe = phi_width(xg[..., 0]), phi_width(xe[..., 0])
    eg, ee = phi_width(np.swapaxes(xg[..., 0], 1, 2)), phi_width(np.swapaxes(xe[..., 0], 1, 2))
    y = np.r_[np.zeros(unconverted.sum()), np.ones(len(pe))]
    assert roc_auc_score(y, np.r_[pg[unconverted], pe]) > 0.58, "electrons are wider in phi than photons"
    assert pg[~unconverted].mean() > pg[unconverted].mean(), "conversions spread in phi"
    assert abs(roc_auc_score(np.r_[np.zeros(len(eg)), np.ones(len(ee))], np.r_[eg, ee]) - 0.5) < 0.06, \
        "the eta width says nothing of the class"
    canvas, times = np.zeros((64, 64)), np.zeros((64, 64))
    showers.deposit(canvas, times, 32.3, 32.7, 80.0, 0.0, np.random.default_rng(1))
    tail = canvas[(canvas > 0) & (canvas < 0.5)]
    spot = 80.0 / showers.MIN_SPOTS
    assert len(tail) > 50 and np.mean(np.abs(tail / spot - np.round(tail / spot)) > 0.05) > 0.5, \
        "tail crystals hold any energy, not multiples of a spot"
    t = np.concatenate([xg[..., 1][xg[..., 0] > 2], xe[..., 1][xe[..., 0] > 2]])
    assert 0.1 < t.std() < 0.4 and abs(t.mean()) < 0.05


@pytest.mark.slow
def test_no_simple_shower_feature_beats_the_cnn(tmp_path: Path) -> None:
    """Generated data judged like real data: a small CNN trained by hpcvit on the images beats every
    one-feature cut and a BDT on simple shower features, on the same test showers."""
    import importlib.util

    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    from tests.test_train_features import make_sweep
    from hpcvit.training.loop import Trainer

    spec_ = importlib.util.spec_from_file_location("baselines", Path(__file__).parents[1] / "benchmarks" /
                                                   "egamma_baselines.py")
    baselines = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(baselines)
    out = generate_egamma(5000, tmp_path / "eg", seed=11, workers=2, shard_size=500)
    sweep = make_sweep(tmp_path, f"""
        name: eg-baselines
        data: {{format: hdf5, paths: {out['paths']}, val_fraction: 0.2, test_fraction: 0.2}}
        model: {{name: cnn_small}}
        optim: {{epochs: 8, batch_size: 64, lr: 2e-3, weight_decay: 0.01, warmup_epochs: 0.5, seed: 0}}
        checkpoint: {{every_minutes: null}}
        resources: {{nproc_per_node: 1}}
        """)
    assert Trainer(sweep.task(0)).run() == 0
    preds = np.load(sweep.task(0).file("predictions.npz"))
    cnn = roc_auc_score(preds["test_y"], preds["test_out"])
    x, y = _read(out["paths"])
    train, val, test = baselines.split(len(y))
    feats = baselines.features(x)
    best_single = max(max(a, 1 - a) for a in (roc_auc_score(y[test], v[test]) for v in feats.values()))
    matrix = np.nan_to_num(np.stack(list(feats.values()), axis=1), posinf=0.0)
    fit = np.concatenate([train, val])
    bdt = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0).fit(matrix[fit], y[fit])
    bdt_auc = roc_auc_score(y[test], bdt.predict_proba(matrix[test])[:, 1])
    print(f"best single feature {best_single:.3f}, BDT {bdt_auc:.3f}, CNN {cnn:.3f}")
    assert best_single < cnn and bdt_auc < cnn, (best_single, bdt_auc, cnn)
