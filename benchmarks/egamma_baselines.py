"""Generated electron/photon showers judged like real data: what simple shower features separate, against a CNN.

Generates ``--n`` showers of each class (``hpcvit data generate --process electron-vs-photon``, the
``make data-egamma`` layout), splits them 60/20/20 as ``jobs/egamma_generated.yaml`` does, and on the same test
showers reports:

* the ROC-AUC of each simple shower feature alone (energy sums, widths in eta and phi, the fraction in the
  hottest crystal and in 3x3 / 5x5, crystals above threshold, second maximum, time moments...), with the
  direction that separates (AUC below 0.5 means the feature is larger for photons);
* a gradient-boosted tree (scikit-learn's HistGradientBoostingClassifier) on all of them, trained on the
  training split, with a 95 % bootstrap interval;
* with ``--cnn``, the test ROC-AUC of ``jobs/egamma_generated.yaml``'s small CNN trained through
  ``hpcvit submit --wait`` on the same files and split (``--epochs``).

The generated set should be separable for physical reasons (brem spread in phi, conversions), not by
artefacts: no single feature and not the BDT should beat the CNN by more than its interval.

Usage: python benchmarks/egamma_baselines.py [--n 8000] [--cnn] [--epochs 8] [--workdir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def features(x: np.ndarray) -> dict[str, np.ndarray]:
    """Simple per-shower quantities of (n, 32, 32, 2) images (energy, time)."""
    e, t = np.clip(x[..., 0].astype(np.float64), 0, None), x[..., 1].astype(np.float64)
    n = len(e)
    total = e.sum(axis=(1, 2)) + 1e-12
    flat = e.reshape(n, -1)
    order = np.sort(flat, axis=1)[:, ::-1]
    i, j = np.unravel_index(flat.argmax(axis=1), e.shape[1:])

    def window(k: int) -> np.ndarray:
        out = np.zeros(n)
        for m in range(n):
            a, b = max(i[m] - k, 0), max(j[m] - k, 0)
            out[m] = e[m, a:i[m] + k + 1, b:j[m] + k + 1].sum()
        return out

    def width(axis: int) -> np.ndarray:
        profile = e.sum(axis=axis)
        pos = np.arange(profile.shape[1])
        mean = (profile * pos).sum(axis=1) / total
        return np.sqrt(np.clip((profile * (pos - mean[:, None]) ** 2).sum(axis=1) / total, 0, None))

    hit = e > 0
    t_mean = (t * e).sum(axis=(1, 2)) / total
    t_spread = np.sqrt(np.clip((e * (t - t_mean[:, None, None]) ** 2).sum(axis=(1, 2)) / total, 0, None))
    e9, e25 = window(1), window(2)
    return {
        "total energy": total, "max crystal": order[:, 0], "second crystal": order[:, 1],
        "max / total": order[:, 0] / total, "E3x3 / total": e9 / total, "E5x5 / total": e25 / total,
        "E3x3 / E5x5": e9 / np.maximum(e25, 1e-12), "outside 5x5": total - e25,
        "eta width": width(2), "phi width": width(1), "phi width / eta width": width(1) / np.maximum(width(2), 1e-6),
        "crystals hit": hit.sum(axis=(1, 2)).astype(np.float64),
        "crystals > 1 GeV": (e > 1).sum(axis=(1, 2)).astype(np.float64),
        "smallest hit": np.where(hit, e, np.inf).min(axis=(1, 2)),
        "time (energy-weighted)": t_mean, "time spread": t_spread, "time of max crystal": t[np.arange(n), i, j],
    }


def auc_interval(y: np.ndarray, s: np.ndarray, reps: int = 300, seed: int = 0) -> tuple[float, float, float]:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(reps):
        idx = rng.integers(0, len(y), len(y))
        if 0 < y[idx].sum() < len(idx):
            values.append(roc_auc_score(y[idx], s[idx]))
    return float(roc_auc_score(y, s)), float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The split of ``hpcvit``'s data layer for val_fraction = test_fraction = 0.2 and split_seed 0."""
    from hpcvit.config import DataSpec
    from hpcvit.data.build import split_indices

    return split_indices(n, DataSpec(format="hdf5", paths=["x"], val_fraction=0.2, test_fraction=0.2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cnn", action="store_true")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--workdir", type=Path, default=Path("egamma-baselines"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import h5py
    from sklearn.ensemble import HistGradientBoostingClassifier

    work = args.workdir.resolve()
    folder = work / "egamma"
    hpcvit = [sys.executable, "-m", "hpcvit.cli"]
    paths = [folder / f"SinglePhotonPt50_IMGCROPS_n{args.n}_hpcvit.hdf5",
             folder / f"SingleElectronPt50_IMGCROPS_n{args.n}_hpcvit.hdf5"]
    if not all(p.exists() for p in paths):
        subprocess.run([*hpcvit, "data", "generate", "--process", "electron-vs-photon", "-n", str(2 * args.n), "--seed",
                        str(args.seed), "--workers", "2", "-o", str(folder)], check=True)
    xs, ys = [], []
    for p in paths:
        with h5py.File(p) as f:
            xs.append(f["X"][:])
            ys.append(f["y"][:])
    x, y = np.concatenate(xs), np.concatenate(ys).astype(int)
    train, val, test = split(len(y))
    feats = features(x)
    table = {name: auc_interval(y[test], v[test]) for name, v in feats.items()}
    matrix = np.stack(list(feats.values()), axis=1)
    matrix[~np.isfinite(matrix)] = 0.0
    bdt = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=0)
    bdt.fit(matrix[np.concatenate([train, val])], y[np.concatenate([train, val])])
    bdt_auc = auc_interval(y[test], bdt.predict_proba(matrix[test])[:, 1])
    print(f"{len(y)} showers ({args.n} of each), test split {len(test)}")
    print(f"{'feature':<26} {'test AUC':>9}  95 % interval")
    for name, (a, lo, hi) in sorted(table.items(), key=lambda kv: -abs(kv[1][0] - 0.5)):
        print(f"{name:<26} {a:9.3f}  [{lo:.3f}, {hi:.3f}]")
    print(f"{'BDT on all of them':<26} {bdt_auc[0]:9.3f}  [{bdt_auc[1]:.3f}, {bdt_auc[2]:.3f}]")
    result = {"n_per_class": args.n, "features": table, "bdt": bdt_auc}
    if args.cnn:
        result["cnn"] = _cnn(work, paths, args.epochs, hpcvit)
        print(f"{'CNN (hpcvit, cnn_small)':<26} {result['cnn']['test'][0]:9.3f}  "
              f"[{result['cnn']['test'][1]:.3f}, {result['cnn']['test'][2]:.3f}]  validation {result['cnn']['val']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


def _cnn(work: Path, paths: list[Path], epochs: int, hpcvit: list[str]) -> dict[str, object]:
    """Test ROC-AUC (with interval) of jobs/egamma_generated.yaml's CNN on these files, trained by hpcvit."""
    import yaml

    doc = yaml.safe_load((REPO / "jobs" / "egamma_generated.yaml").read_text())
    doc["data"]["paths"] = [str(p) for p in paths]
    doc["data"]["cache_dir"] = str(work / "cache")
    doc["optim"]["epochs"] = epochs
    doc["output_dir"] = str(work / "runs")
    doc.pop("sweep", None)
    doc["model"] = {"name": "cnn_small", "kwargs": {"width": 32}}
    spec = work / "egamma_cnn.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    subprocess.run([*hpcvit, "submit", str(spec), "--wait"], check=True, cwd=work)
    sweep = max((work / "runs").glob("egamma-generated-*"), key=lambda p: p.stat().st_mtime)
    task = sweep / "tasks" / "00000"
    with np.load(task / "predictions.npz") as p:
        test = auc_interval(p["test_y"].astype(int), p["test_out"])
    result = json.loads((task / "result.json").read_text())
    return {"test": test, "val": result["best_metric"], "sweep": str(sweep)}


if __name__ == "__main__":
    main()
