"""A simple ILD-like barrel: what the calorimeter-hit generator simulates, and what it leaves out.

Modelled: a tracker volume (a charged particle leaves :data:`TRACK_POINTS` hits along its helix in a
:data:`FIELD_T` solenoid field, flagged as track hits, their number the track's momentum); a silicon-tungsten
ECAL of :data:`ECAL_LAYERS` layers (0.8 X0 each, 24 X0, about 0.9 interaction lengths) with 5 x 5 mm cells; a
steel-scintillator HCAL of :data:`HCAL_LAYERS` layers (0.12 lambda each, 5.8 lambda) with 3 x 3 cm tiles.
Electromagnetic showers follow a longitudinal gamma profile (t_max = ln(E/E_c) -/+ 0.5) with a core-plus-tail
lateral profile in Moliere radii; hadronic showers start at an exponentially distributed depth (MIP deposits
before), with an electromagnetic fraction that grows with energy and fluctuates, a broader hadronic part and a
delayed, wider slow-neutron component; muons leave MIP deposits in every layer. Energies are calibrated
deposits in GeV, smeared by the stochastic terms of :data:`EM_STOCHASTIC` and :data:`HAD_STOCHASTIC`; cells
below half a MIP are dropped; noise hits are added around the particles.

Not modelled: the endcaps, the detailed sampling structure (silicon, absorber and gaps are one medium per
calorimeter), bending inside the calorimeters, backscatter, nuclear break-up products other than the slow
neutron component, particle decays in flight, conversions in the tracker, cracks and dead cells.
"""

from __future__ import annotations

import math

import numpy as np

TRACKER, ECAL, HCAL = 0, 1, 2
FIELD_T = 3.5
TRACK_POINTS = 12
TRACKER_MM = (330.0, 1700.0)
ECAL_RADIUS_MM = 1805.0
ECAL_LAYERS, ECAL_LAYER_MM, ECAL_CELL_MM = 30, 6.2, 5.0
ECAL_X0_PER_LAYER, ECAL_LAMBDA_PER_LAYER = 0.8, 0.03
HCAL_RADIUS_MM = ECAL_RADIUS_MM + ECAL_LAYERS * ECAL_LAYER_MM + 20.0
HCAL_LAYERS, HCAL_LAYER_MM, HCAL_CELL_MM = 48, 26.5, 30.0
HCAL_X0_PER_LAYER, HCAL_LAMBDA_PER_LAYER = 1.2, 0.12
MOLIERE_MM = {ECAL: 15.0, HCAL: 25.0}
CRITICAL_GEV = 0.008
EM_STOCHASTIC, HAD_STOCHASTIC = 0.16, 0.55
MIP_GEV = {ECAL: 0.006, HCAL: 0.024}
"""A MIP's calibrated deposit in one layer."""
THRESHOLD_MIP = 0.5
C_MM_PER_NS = 299.792458
SPOTS_PER_GEV, MAX_SPOTS = 60, 3000
NEUTRON_DELAY_NS = 50.0


def layer_radius(det: int, layer: np.ndarray | int) -> np.ndarray:
    """The radius of a layer's centre (mm)."""
    if det == ECAL:
        return ECAL_RADIUS_MM + (np.asarray(layer) + 0.5) * ECAL_LAYER_MM
    return HCAL_RADIUS_MM + (np.asarray(layer) + 0.5) * HCAL_LAYER_MM


def helix(px: float, py: float, pz: float, charge: float, r: np.ndarray) -> tuple[np.ndarray, ...]:
    """Points (x, y, z) of a track from the origin at radii ``r`` (mm) and the transverse direction there; NaN
    beyond the largest radius the track reaches (a looper)."""
    pt = math.hypot(px, py)
    phi0 = math.atan2(py, px)
    r = np.asarray(r, dtype=np.float64)
    if charge == 0 or pt <= 0:
        return r * math.cos(phi0), r * math.sin(phi0), r * pz / max(pt, 1e-12), np.full_like(r, phi0)
    radius = pt / (0.3 * FIELD_T) * 1000.0  # mm
    s = np.clip(r / (2 * radius), -np.inf, np.inf)
    half = np.where(s <= 1, np.arcsin(np.clip(s, -1, 1)), np.nan)
    phi = phi0 - np.sign(charge) * half
    z = 2 * radius * half * pz / pt
    return r * np.cos(phi), r * np.sin(phi), z, phi0 - np.sign(charge) * 2 * half


def _spot_count(energy: float) -> int:
    return int(min(MAX_SPOTS, max(20, SPOTS_PER_GEV * energy)))


def em_spots(rng: np.random.Generator, energy: float, start: float, photon: bool
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Energy spots of an electromagnetic shower: (depth in X0 from ``start``, lateral radius in Moliere radii,
    energy of each spot); the visible energy fluctuates by the ECAL's stochastic term."""
    n = _spot_count(energy)
    t_max = max(0.5, math.log(max(energy, CRITICAL_GEV * 1.01) / CRITICAL_GEV) + (0.5 if photon else -0.5))
    b = 0.5
    a = b * t_max + 1
    depth = start + rng.gamma(a, 1 / b, n)
    frac = np.clip(depth / (t_max * 2.5), 0, 1)
    core = rng.random(n) < 0.85 - 0.25 * frac  # the tail grows with depth
    u = rng.random(n)
    lateral = np.where(core, 0.25 + 0.3 * frac, 1.6) * np.sqrt(u / (1 - u + 1e-9))  # r f(r) ~ 2 r R^2 / (r^2+R^2)^2
    visible = energy * max(0.0, 1 + rng.normal(0, EM_STOCHASTIC / math.sqrt(energy)))
    return depth, np.minimum(lateral, 8.0), np.full(n, visible / n)


def hadron_spots(rng: np.random.Generator, energy: float) -> dict[str, np.ndarray]:
    """A hadronic shower in interaction lengths from its first interaction: the EM part (depth in X0 units of
    the interaction point's medium is resolved by the caller), the hadronic part and the slow neutrons."""
    f_em = float(np.clip(1 - (max(energy, 1.0) / 1.0) ** (0.82 - 1) + rng.normal(0, 0.1), 0.05, 0.95))
    visible = energy * max(0.05, 1 + rng.normal(0, HAD_STOCHASTIC / math.sqrt(energy)))
    n = _spot_count(energy)
    n_em = max(1, int(n * f_em))
    n_had = max(1, n - n_em)
    n_slow = max(1, int(0.15 * n_had))
    n_had -= n_slow
    u = rng.random(n_had)
    return {
        "em_depth_x0": rng.gamma(2.0, 1 / 0.5, n_em), "em_lateral_rm": 0.6 * np.sqrt((u2 := rng.random(n_em))
                                                                                      / (1 - u2 + 1e-9)),
        "em_e": np.full(n_em, visible * f_em / n_em),
        "had_depth_lambda": rng.gamma(1.6, 1 / 1.6, n_had), "had_lateral_mm": 60.0 * np.sqrt(u / (1 - u + 1e-9)),
        "had_e": np.full(n_had, visible * (1 - f_em) * 0.85 / n_had),
        "slow_depth_lambda": rng.gamma(1.8, 1 / 1.2, n_slow),
        "slow_lateral_mm": 180.0 * np.sqrt((u3 := rng.random(n_slow)) / (1 - u3 + 1e-9)),
        "slow_e": np.full(n_slow, visible * (1 - f_em) * 0.15 / n_slow),
        "slow_delay_ns": rng.exponential(NEUTRON_DELAY_NS, n_slow),
    }


def material_depth(lam: np.ndarray) -> np.ndarray:
    """The radial distance (mm) behind the ECAL front at which ``lam`` interaction lengths are crossed (radially
    through the ECAL, then the gap, then the HCAL)."""
    ecal_lambda = ECAL_LAYERS * ECAL_LAMBDA_PER_LAYER
    in_ecal = lam < ecal_lambda
    ecal_mm = lam / ECAL_LAMBDA_PER_LAYER * ECAL_LAYER_MM
    hcal_mm = (HCAL_RADIUS_MM - ECAL_RADIUS_MM) + (lam - ecal_lambda) / HCAL_LAMBDA_PER_LAYER * HCAL_LAYER_MM
    return np.where(in_ecal, ecal_mm, hcal_mm)


def x0_depth(start_mm: float, x0: np.ndarray) -> np.ndarray:
    """The radial distance (mm) behind the ECAL front reached ``x0`` radiation lengths after ``start_mm``."""
    ecal_end = ECAL_LAYERS * ECAL_LAYER_MM
    out = np.empty_like(np.asarray(x0, dtype=np.float64))
    if start_mm < ecal_end:
        left_x0 = (ecal_end - start_mm) / ECAL_LAYER_MM * ECAL_X0_PER_LAYER
        in_ecal = x0 < left_x0
        out[in_ecal] = start_mm + x0[in_ecal] / ECAL_X0_PER_LAYER * ECAL_LAYER_MM
        rest = x0[~in_ecal] - left_x0
        out[~in_ecal] = (HCAL_RADIUS_MM - ECAL_RADIUS_MM) + rest / HCAL_X0_PER_LAYER * HCAL_LAYER_MM
    else:
        out[:] = start_mm + x0 / HCAL_X0_PER_LAYER * HCAL_LAYER_MM
    return out


def cell_of(radial_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(subdetector, layer) of points at ``radial_mm`` behind the ECAL front; subdetector -1 outside both."""
    r = ECAL_RADIUS_MM + np.asarray(radial_mm)
    det = np.full(r.shape, -1, dtype=np.int64)
    layer = np.zeros(r.shape, dtype=np.int64)
    e = (r >= ECAL_RADIUS_MM) & (r < ECAL_RADIUS_MM + ECAL_LAYERS * ECAL_LAYER_MM)
    h = (r >= HCAL_RADIUS_MM) & (r < HCAL_RADIUS_MM + HCAL_LAYERS * HCAL_LAYER_MM)
    det[e], layer[e] = ECAL, ((r[e] - ECAL_RADIUS_MM) // ECAL_LAYER_MM).astype(np.int64)
    det[h], layer[h] = HCAL, ((r[h] - HCAL_RADIUS_MM) // HCAL_LAYER_MM).astype(np.int64)
    return det, layer
