"""Boosted A -> gamma gamma for mass regression, in the 8-channel ``X_jet`` Parquet layout (target ``m``).

Seed 004's task (arXiv:2204.12313): regress the mass of a light pseudoscalar A whose two photons merge in the
ECAL at high boost. Here A has m_A uniform in 0.1-1.6 GeV and pT uniform in 20-100 GeV, |eta| < 1.4, and
decays isotropically in its rest frame; each photon may convert in the tracker and showers in the ECAL
(:mod:`hpcvit.data.showers`). Images are 125 x 125 crystals (0.0174 in eta and phi) centred on the A
direction, channels in the CMS end-to-end order:

0. track pT (GeV) at the track's ECAL impact: conversion legs from conversions inside 0.6 m, plus the soft
   tracks of a simple underlying event (Poisson 4, pT exponential with mean 1 GeV, uniform in the window);
1. d0 (cm) and 2. dz (cm) of those tracks: a conversion leg's d0 is its conversion radius times the sine of
   its bend, the underlying event's d0 ~ N(0, 0.01) and dz ~ N(0, 5);
3. ECAL energy (GeV): the showers, smeared and zero-suppressed, the channel the mass is in;
4. HCAL energy (GeV): 1 % leakage of each shower summed in 5 x 5 towers (a rough stand-in);
5.-7. pixel barrel layers 1-3 (r = 2.9, 6.8, 10.9 cm): a hit per track that exists at that radius.

Channels 0-2 and 4-7 are not modelled faithfully (no tracker simulation, no pile-up); channel 3 is what the
mass is measured from. Rows: ``X_jet`` (8 x 125 x 125), ``m`` (GeV), ``pt``, ``eta``, ``phi``, ``ieta``,
``iphi`` (the A direction's crystal indices), one row per row group by default, snappy.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit import fsio
from hpcvit.data import showers
from hpcvit.data.generate_egamma import plan

IMAGE = 125
CHANNELS = ["track pT", "track d0", "track dz", "ECAL", "HCAL", "BPix layer 1", "BPix layer 2", "BPix layer 3"]
PIXEL_RADII = (0.029, 0.068, 0.109)
M_RANGE, PT_RANGE, ETA_MAX = (0.1, 1.6), (20.0, 100.0), 1.4
HCAL_LEAK, TOWER, UE_TRACKS, UE_PT = 0.01, 5, 4.0, 1.0
CONVERSION_TRACKING = 0.6


def _decay(m: float, pt: float, eta: float, phi: float, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """(E, eta, phi) of the two photons of an isotropic two-body decay of A."""
    p = pt * math.cosh(eta)
    e_a = math.hypot(p, m)
    beta = np.array([math.cos(phi) / math.cosh(eta), math.sin(phi) / math.cosh(eta), math.tanh(eta)]) * p / e_a
    cos_t, az = rng.uniform(-1, 1), rng.uniform(0, 2 * math.pi)
    sin_t = math.sqrt(1 - cos_t ** 2)
    out = []
    for sign in (1, -1):
        k = sign * (m / 2) * np.array([sin_t * math.cos(az), sin_t * math.sin(az), cos_t])
        e = m / 2
        b2 = float(beta @ beta)
        gamma = 1 / math.sqrt(1 - b2)
        bp = float(beta @ k)
        k_lab = k + ((gamma - 1) * bp / b2 + gamma * e) * beta
        e_lab = gamma * (e + bp)
        pt_g = math.hypot(k_lab[0], k_lab[1])
        out.append((e_lab, math.asinh(k_lab[2] / pt_g), math.atan2(k_lab[1], k_lab[0])))
    return out


def _wrap(dphi: float) -> float:
    return (dphi + math.pi) % (2 * math.pi) - math.pi


def simulate(n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``n`` images (n, 8, 125, 125) float32 and their scalars (``m``, ``pt``, ``eta``, ``phi``, ``ieta``,
    ``iphi``)."""
    x = np.zeros((n, 8, IMAGE, IMAGE), dtype=np.float32)
    m = rng.uniform(*M_RANGE, n)
    pt = rng.uniform(*PT_RANGE, n)
    eta = rng.uniform(-ETA_MAX, ETA_MAX, n)
    phi = rng.uniform(-math.pi, math.pi, n)
    centre = IMAGE / 2
    for k in range(n):
        canvas, times = np.zeros((IMAGE, IMAGE)), np.zeros((IMAGE, IMAGE))
        tracks: list[tuple[float, float, float, float, float, float]] = []  # (ieta, iphi, pT, d0, dz, radius)
        for e_g, eta_g, phi_g in _decay(m[k], pt[k], eta[k], phi[k], rng):
            ie = centre + (eta_g - eta[k]) / showers.CRYSTAL
            ip = centre + _wrap(phi_g - phi[k]) / showers.CRYSTAL
            x0 = float(showers.material_x0(eta_g))
            legs = showers.photon_path(rng, e_g, eta_g, x0)
            r_conv = showers.R_TRACKER * rng.random() if len(legs) > 1 else None
            for e_leg, dphi, charge in legs:
                showers.deposit(canvas, times, ie, ip + dphi / showers.CRYSTAL, e_leg, 0.0, rng)
                if charge and r_conv is not None and r_conv < CONVERSION_TRACKING:
                    tracks.append((ie, ip + dphi / showers.CRYSTAL, e_leg / math.cosh(eta_g),
                                   100 * r_conv * abs(math.sin(dphi)), 0.0, r_conv))
        for _ in range(rng.poisson(UE_TRACKS)):
            tracks.append((rng.uniform(0, IMAGE), rng.uniform(0, IMAGE), rng.exponential(UE_PT),
                           rng.normal(0, 0.01), rng.normal(0, 5.0), 0.0))
        energy, _ = showers.digitise(canvas, times, rng)
        img = x[k]
        img[3] = energy
        towers = energy.reshape(IMAGE // TOWER, TOWER, IMAGE // TOWER, TOWER).sum(axis=(1, 3)) * HCAL_LEAK
        img[4] = np.kron(towers, np.ones((TOWER, TOWER))) / TOWER ** 2
        for ie, ip, tpt, d0, dz, r0 in tracks:
            i, j = int(ie), int(ip)
            if 0 <= i < IMAGE and 0 <= j < IMAGE:
                img[0, i, j] += tpt
                img[1, i, j] = d0
                img[2, i, j] = dz
                for layer, radius in enumerate(PIXEL_RADII):
                    if r0 < radius:
                        img[5 + layer, i, j] += 1.0
    ieta = np.floor((eta + 2.5) / showers.CRYSTAL)
    iphi = np.floor((phi + math.pi) / showers.CRYSTAL)
    return x, {"m": m, "pt": pt, "eta": eta, "phi": phi, "ieta": ieta, "iphi": iphi}


def opening_angle_mass(ecal: np.ndarray, eta: np.ndarray, min_peak_gev: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: the diphoton mass from the two leading ECAL clusters of each (n, 125, 125) image,
    ``m ~ sqrt(ET1 ET2) * dR`` (the small-angle invariant mass; 3 x 3 sums around the two highest local maxima
    within 12 crystals of each other); returns (estimate, merged) where ``merged`` marks images with one
    cluster only (the photons too close to resolve), whose estimate is 0."""
    from scipy.ndimage import maximum_filter, uniform_filter

    est, merged = np.zeros(len(ecal)), np.zeros(len(ecal), dtype=bool)
    for k in range(len(ecal)):
        e = np.clip(ecal[k], 0, None)
        sums = uniform_filter(e, 3) * 9
        peaks = (e == maximum_filter(e, 3)) & (e > min_peak_gev)
        where, values = np.argwhere(peaks), sums[peaks]
        order = np.argsort(-values)
        if len(order) >= 2 and values[order[1]] > 0.05 * values[order[0]] \
                and np.abs(where[order[0]] - where[order[1]]).max() <= 12:
            (i1, j1), (i2, j2) = where[order[0]], where[order[1]]
            et = values[order[:2]] / math.cosh(float(eta[k]))
            est[k] = math.sqrt(et[0] * et[1]) * math.hypot(i1 - i2, j1 - j2) * showers.CRYSTAL
        else:
            merged[k] = True
    return est, merged


def _work(shard: Any) -> dict[str, Any]:
    x, scalars = simulate(shard.n, np.random.default_rng(shard.seed))
    return {"index": shard.index, "x": x, **scalars}


def generate_diphoton(n: int, out: Path, seed: int = 1, workers: int = 1, shard_size: int = 100,
                      row_group_size: int = 1) -> dict[str, Any]:
    """Write ``n`` A -> gamma gamma images into the Parquet file ``out`` (atomically); a summary."""
    import pyarrow.parquet as pq

    from hpcvit.data.parquet import jets_table

    if n < 1 or shard_size < 1:
        raise ValueError("n and shard_size must be at least 1")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shards = [s for s in plan(n, seed, shard_size) if s.label == 1]  # one class: every shard is an A sample
    meta = {"process": "diphoton-mass", "seed": seed, "n": n, "shard_size": shard_size, "channels": CHANNELS,
            "m_gev": list(M_RANGE), "pt_gev": list(PT_RANGE), "abs_eta_max": ETA_MAX,
            "generator": "hpcvit.data.generate_diphoton"}
    t0 = time.monotonic()
    writer = None
    try:
        with fsio.atomic_path(out) as tmp:
            with mp.get_context("spawn").Pool(max(1, min(workers, len(shards)))) as pool:
                for res in pool.imap(_work, shards):
                    table = jets_table(res["x"], {k: res[k] for k in ("m", "pt", "eta", "phi", "ieta", "iphi")},
                                       image_column="X_jet", metadata=meta)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema, compression="snappy")
                    writer.write_table(table, row_group_size=row_group_size)
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.close()
    return {"path": str(out), "n": n, "seconds": round(time.monotonic() - t0, 2)}
