"""Single electrons and photons of pT 50 GeV in the barrel ECAL, in the published HDF5 layout.

One file per class, as published (``SinglePhotonPt50...hdf5`` with ``y = 0``, ``SingleElectronPt50...hdf5``
with ``y = 1``): ``X`` (N, 32, 32, 2) float32 (crystal energy in GeV, arrival time in ns) cropped around the
most energetic crystal, ``y`` (N,) float32, and the gun's ``pt``, ``eta``, ``phi`` (N,) float32. The particles come from a particle gun (uniform in |eta| < 1.4
and in phi, both charges for electrons); their path through the tracker and their showers are
:mod:`hpcvit.data.showers`. Work is split into shards of one class, each seeded from the run's seed, so the
files depend on the seed, ``n`` and the shard size only, not on the number of worker processes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit import fsio
from hpcvit.data import showers
from hpcvit.parallel import spawn_map

PT = 50.0
ETA_MAX = 1.4
CROP = 32
CANVAS = 64
SCALARS = ("pt", "eta", "phi")
"""Per-particle columns beside ``X`` and ``y``: the gun's pT (GeV), eta and phi (for cuts and scalar inputs)."""
FILES = {0: "SinglePhotonPt50_IMGCROPS_n{n}_hpcvit.hdf5", 1: "SingleElectronPt50_IMGCROPS_n{n}_hpcvit.hdf5"}


@dataclass(frozen=True)
class EGammaShard:
    index: int
    label: int
    n: int
    seed: int


def plan(n: int, seed: int, shard_size: int) -> list[EGammaShard]:
    """``n`` particles of each class in shards of ``shard_size``, each with its own seed."""
    sizes = [shard_size] * (n // shard_size) + ([n % shard_size] if n % shard_size else [])
    order = [(lab, size) for size in sizes for lab in (0, 1)]
    seqs = np.random.SeedSequence(seed).spawn(len(order))
    return [EGammaShard(i, lab, size, int(s.generate_state(1)[0])) for i, ((lab, size), s) in enumerate(zip(order, seqs))]


def simulate(label: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``n`` images (n, 32, 32, 2) of class ``label`` (0 photon, 1 electron) and what made each one."""
    x = np.zeros((n, CROP, CROP, 2), dtype=np.float32)
    eta = rng.uniform(-ETA_MAX, ETA_MAX, n)
    phi = rng.uniform(-math.pi, math.pi, n)
    converted = np.zeros(n, dtype=bool)
    for k in range(n):
        energy = PT * math.cosh(eta[k])
        x0 = float(showers.material_x0(eta[k]))
        if label == 1:
            legs = showers.electron_path(rng, energy, eta[k], x0, charge=int(rng.choice([-1, 1])))
        else:
            legs = showers.photon_path(rng, energy, eta[k], x0)
            converted[k] = len(legs) != 1 or legs[0].charge != 0
        canvas, times = np.zeros((CANVAS, CANVAS)), np.zeros((CANVAS, CANVAS))
        ie0 = CANVAS / 2 + rng.random()  # where in a crystal the particle points
        ip0 = CANVAS / 2 + rng.random()
        t0 = showers.T0_SPREAD_NS * rng.standard_normal()  # the collision's time, common to the event
        for leg in legs:
            showers.deposit(canvas, times, ie0, ip0 + leg.dphi / showers.CRYSTAL, leg.energy, t0 + leg.delay_ns, rng)
        energy_img, time_img = showers.digitise(canvas, times, rng)
        ce, ct = showers.crop(energy_img, time_img, CROP)
        x[k, :, :, 0], x[k, :, :, 1] = ce, ct
    return x, {"eta": eta, "phi": phi, "converted": converted}


def _work(shard: EGammaShard) -> dict[str, Any]:
    x, facts = simulate(shard.label, shard.n, np.random.default_rng(shard.seed))
    return {"index": shard.index, "label": shard.label, "x": x, **facts}


def generate_egamma(n: int, out_dir: Path, seed: int = 1, workers: int = 1, shard_size: int = 250) -> dict[str, Any]:
    """Write ``n`` photons and ``n`` electrons into two HDF5 files in ``out_dir`` (atomically); a summary."""
    import h5py

    if n < 1 or shard_size < 1:
        raise ValueError("n and shard_size must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {lab: out_dir / name.format(n=n) for lab, name in FILES.items()}
    t0 = time.monotonic()
    shards = plan(n, seed, shard_size)
    converted = {0: 0, 1: 0}
    with fsio.atomic_path(paths[0]) as tmp0, fsio.atomic_path(paths[1]) as tmp1:
        files = {0: h5py.File(tmp0, "w"), 1: h5py.File(tmp1, "w")}
        try:
            for lab, f in files.items():
                f.create_dataset("X", shape=(0, CROP, CROP, 2), maxshape=(None, CROP, CROP, 2), dtype=np.float32,
                                 chunks=(256, CROP, CROP, 2))
                f.create_dataset("y", shape=(0,), maxshape=(None,), dtype=np.float32)
                for column in SCALARS:
                    f.create_dataset(column, shape=(0,), maxshape=(None,), dtype=np.float32)
                f.attrs.update({"generator": "hpcvit.data.generate_egamma", "seed": seed, "pt_gev": PT,
                                "abs_eta_max": ETA_MAX, "label": ["photon", "electron"][lab],
                                "channels": "ECAL energy (GeV), arrival time (ns)"})
            # in shard order: the files do not depend on scheduling
            for res in spawn_map(_work, shards, max(1, min(workers, len(shards))), what="generator"):
                f = files[res["label"]]
                m = len(res["x"])
                f["X"].resize(f["X"].shape[0] + m, axis=0)
                f["X"][-m:] = res["x"]
                f["y"].resize(f["y"].shape[0] + m, axis=0)
                f["y"][-m:] = float(res["label"])
                for column, values in (("pt", np.full(m, PT)), ("eta", res["eta"]), ("phi", res["phi"])):
                    f[column].resize(f[column].shape[0] + m, axis=0)
                    f[column][-m:] = values
                converted[res["label"]] += int(res["converted"].sum())
        finally:
            for f in files.values():
                f.close()
    return {"paths": [str(paths[0]), str(paths[1])], "per_class": n, "seconds": round(time.monotonic() - t0, 2),
            "photon_conversion_fraction": round(converted[0] / n, 4)}
