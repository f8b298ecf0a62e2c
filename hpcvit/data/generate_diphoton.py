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
4. HCAL energy (GeV) in 5 x 5 towers: each shower's leakage behind the crystals (a fraction drawn around
   1 %), the underlying event's charged hadrons at their bent impact (30-90 % of their energy) and its
   neutral hadrons (Poisson 2);
5.-7. pixel barrel layers 1-3 (r = 2.9, 6.8, 10.9 cm): a hit where each track crosses the layer, bent by the
   field by then (a soft track's hits move along phi from layer to layer; a conversion leg hits only the
   layers outside its conversion radius).

Channels 0-2 and 4-7 are simplified (no tracker simulation, no pile-up, no hadron showers); channel 3 is what
the mass is measured from. Rows: ``X_jet`` (8 x 125 x 125), ``m`` (GeV), ``pt``, ``eta``, ``phi``, ``ieta``,
``iphi`` (the A direction's crystal indices), one row per row group by default, snappy.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit import fsio
from hpcvit.data import showers
from hpcvit.data.generate_egamma import plan
from hpcvit.parallel import spawn_map

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


def _add(image: np.ndarray, ie: float, ip: float, value: float) -> None:
    i, j = int(ie), int(ip)
    if 0 <= i < image.shape[0] and 0 <= j < image.shape[1]:
        image[i, j] += value


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
        hcal = np.zeros((IMAGE, IMAGE))
        # (ieta, iphi of the direction at its origin, pT, d0, dz, origin radius, charge, phi change to the ECAL)
        tracks: list[tuple[float, float, float, float, float, float, int, float]] = []
        t0 = showers.T0_SPREAD_NS * rng.standard_normal()
        for e_g, eta_g, phi_g in _decay(m[k], pt[k], eta[k], phi[k], rng):
            ie = centre + (eta_g - eta[k]) / showers.CRYSTAL
            ip = centre + _wrap(phi_g - phi[k]) / showers.CRYSTAL
            x0 = float(showers.material_x0(eta_g))
            for leg in showers.photon_path(rng, e_g, eta_g, x0):
                ip_leg = ip + leg.dphi / showers.CRYSTAL
                showers.deposit(canvas, times, ie, ip_leg, leg.energy, t0 + leg.delay_ns, rng)
                _add(hcal, ie, ip_leg, leg.energy * rng.gamma(2.0, HCAL_LEAK / 2))  # the shower's leakage
                if leg.charge and leg.origin_m < CONVERSION_TRACKING:
                    tracks.append((ie, ip, leg.energy / math.cosh(eta_g), 100 * leg.origin_m * abs(math.sin(leg.dphi)),
                                   0.0, leg.origin_m, leg.charge, leg.dphi))
        for _ in range(rng.poisson(UE_TRACKS)):  # charged hadrons of the underlying event: tracks and HCAL
            ie, ip, tpt, q = rng.uniform(0, IMAGE), rng.uniform(0, IMAGE), rng.exponential(UE_PT), int(rng.choice([-1, 1]))
            dphi = showers.track_dphi(0.0, showers.R_ECAL, tpt, q)
            tracks.append((ie, ip, tpt, rng.normal(0, 0.01), rng.normal(0, 5.0), 0.0, q, dphi))
            if math.isfinite(dphi):
                _add(hcal, ie, ip + dphi / showers.CRYSTAL, tpt * math.cosh(eta[k]) * rng.uniform(0.3, 0.9))
        for _ in range(rng.poisson(UE_TRACKS / 2)):  # neutral hadrons: HCAL only
            _add(hcal, rng.uniform(0, IMAGE), rng.uniform(0, IMAGE),
                 rng.exponential(UE_PT) * math.cosh(eta[k]) * rng.uniform(0.5, 1.0))
        energy, _ = showers.digitise(canvas, times, rng)
        img = x[k]
        img[3] = energy
        towers = hcal.reshape(IMAGE // TOWER, TOWER, IMAGE // TOWER, TOWER).sum(axis=(1, 3))
        img[4] = np.kron(towers, np.ones((TOWER, TOWER))) / TOWER ** 2
        for ie, ip, tpt, d0, dz, r0, q, at_ecal in tracks:
            i = int(ie)
            j = int(ip + at_ecal / showers.CRYSTAL) if math.isfinite(at_ecal) else -1  # -1: curled up before
            if 0 <= i < IMAGE and 0 <= j < IMAGE:
                img[0, i, j] += tpt
                img[1, i, j] = d0
                img[2, i, j] = dz
            for layer, radius in enumerate(PIXEL_RADII):  # where the track crosses each layer (bent by then)
                if r0 < radius:
                    dphi = showers.track_dphi(r0, radius, tpt, q)
                    jl = int(ip + dphi / showers.CRYSTAL) if math.isfinite(dphi) else -1
                    if 0 <= i < IMAGE and 0 <= jl < IMAGE:
                        img[5 + layer, i, jl] += 1.0
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
            "generator": "hpcvit.data.generate_diphoton",
            "modelling": {"ECAL": "showers through the tracker's material and the crystals (hpcvit.data.showers)",
                          "track pT, d0, dz, BPix layers": "simplified: conversion legs and underlying-event tracks "
                          "bent in the field, no tracker simulation, no pile-up",
                          "HCAL": "simplified: the showers' leakage and the underlying event's hadrons in 5 x 5 "
                          "towers, no hadron showers"}}
    t0 = time.monotonic()
    writer = None
    try:
        with fsio.atomic_path(out) as tmp:
            for res in spawn_map(_work, shards, max(1, min(workers, len(shards))), what="generator"):
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
