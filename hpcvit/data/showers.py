"""Electromagnetic showers in a CMS-like barrel ECAL: the detector part of the electron/photon and diphoton
generators (:mod:`hpcvit.data.generate_egamma`, :mod:`hpcvit.data.generate_diphoton`).

A particle leaves the beam line at (eta, phi) in a 3.8 T solenoid, crosses the tracker's material and hits
lead-tungstate crystals of 0.0174 x 0.0174 (eta x phi) at 1.29 m:

* material: ``x0(eta)`` radiation lengths before the ECAL (0.4 X0 at eta 0 rising to 1.0 X0 at |eta| 1.4,
  roughly CMS's tracker); a photon converts with probability ``1 - exp(-7/9 x0)`` at a depth drawn along its
  path, into an e+ e- pair sharing its energy (uniform split);
* charged particles follow their circle in the field (bending radius ``pT / (0.3 B)``) to the ECAL;
* electrons radiate: the energy fraction they keep after t X0 follows Bethe-Heitler, ``-ln z ~ Gamma(t / ln
  2)``; the radiated energy leaves as photons along the electron's direction at the emission radius, while
  the electron, with the transverse momentum it keeps, curls further in phi: brem spreads the deposit along
  phi;
* each particle reaching the ECAL showers with a two-component (core + tail) radial profile in Moliere radii
  (Grindhammer's form ``2 r R^2 / (r^2 + R^2)^2``; R_M = 2.19 cm, one crystal), sampled with energy spots;
  energy resolution 2.8 %/sqrt(E) (+) 0.3 %; electronic noise 40 MeV per crystal, crystals below 3 sigma
  read 0; the timing channel holds the arrival time (path length over c, relative to a straight photon, plus
  the collision time's spread) smeared by ``0.4 ns GeV / E (+) 0.07 ns`` in crystals with energy, 0 elsewhere.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

CRYSTAL = 0.0174
"""Crystal size in eta and in phi (radians)."""
R_ECAL = 1.29
"""Radius of the ECAL front face, metres."""
R_TRACKER = 1.1
"""Radius within which the tracker's material (and so conversions and brems) sits, metres."""
B_FIELD = 3.8
MOLIERE = 2.19 / 2.2
"""Moliere radius in crystal widths."""
CORE_FRACTION, CORE_RADIUS, TAIL_RADIUS = 0.85, 0.3 * MOLIERE, 1.4 * MOLIERE
SPOT_GEV, MIN_SPOTS, MAX_SPOTS = 0.01, 500, 20000
"""About one energy spot per 10 MeV of shower energy, within these bounds."""
T0_SPREAD_NS = 0.18
"""Spread of the collision time (the LHC's bunch length): a common offset of every crystal of an event."""
STOCHASTIC, CONSTANT = 0.028, 0.003
NOISE_GEV = 0.04
TIME_NOISE, TIME_CONSTANT = 0.4, 0.07


def material_x0(eta: np.ndarray) -> np.ndarray:
    """Radiation lengths of tracker material before the ECAL at pseudorapidity ``eta``."""
    return 0.4 + 0.6 * np.clip(np.abs(eta) / 1.4, 0.0, 1.0) ** 2


def bending_radius(pt: float) -> float:
    """Radius of curvature in metres of a particle of transverse momentum ``pt`` GeV in the solenoid."""
    return pt / (0.3 * B_FIELD)


C_M_PER_NS = 0.299792458
"""Speed of light, metres per nanosecond."""


class Leg(NamedTuple):
    """What reaches the ECAL: energy (GeV), impact angle in phi (radians, from the particle's initial
    direction), charge, and arrival time (ns) after a straight photon from the vertex to the same crystal."""

    energy: float
    dphi: float
    charge: int
    delay_ns: float
    origin_m: float = 0.0
    """Radius where this leg began (a conversion's radius; 0 from the vertex)."""


def _straight(x: float, y: float, psi: float, r_target: float) -> tuple[float, float, float]:
    """A neutral from (x, y) in direction ``psi`` to radius ``r_target``: (x, y, path length)."""
    dx, dy = math.cos(psi), math.sin(psi)
    pd = x * dx + y * dy
    t = -pd + math.sqrt(max(pd * pd - (x * x + y * y) + r_target ** 2, 0.0))
    return x + t * dx, y + t * dy, t


def _arc(x: float, y: float, psi: float, pt: float, charge: int, r_target: float
         ) -> tuple[float, float, float, float] | None:
    """A charged particle of transverse momentum ``pt`` from (x, y) in direction ``psi`` along its circle in the
    solenoid to radius ``r_target``: (x, y, direction, path length), or None when it curls back first."""
    turn = -charge / bending_radius(max(pt, 1e-3))  # radians per metre
    s = np.linspace(0.0, min(math.pi / abs(turn), 4.0 * r_target), 1025)
    xs = x + (np.sin(psi + turn * s) - math.sin(psi)) / turn
    ys = y - (np.cos(psi + turn * s) - math.cos(psi)) / turn
    r = np.hypot(xs, ys)
    out = np.flatnonzero(r >= r_target)
    if not len(out):
        return None
    i = int(out[0])
    if i == 0:
        return x, y, psi, 0.0
    f = (r_target - r[i - 1]) / max(r[i] - r[i - 1], 1e-12)  # linear between the two samples around r_target
    s_hit = s[i - 1] + f * (s[i] - s[i - 1])
    return (x + (math.sin(psi + turn * s_hit) - math.sin(psi)) / turn,
            y - (math.cos(psi + turn * s_hit) - math.cos(psi)) / turn, psi + turn * s_hit, s_hit)


def _leg(energy: float, x: float, y: float, path_t: float, charge: int, eta: float, origin_m: float = 0.0) -> Leg:
    """The leg reaching the ECAL at (x, y) after ``path_t`` metres in the transverse plane."""
    extra = (path_t - R_ECAL) * math.cosh(eta)  # a helix's length is its transverse length times cosh(eta)
    return Leg(energy, math.atan2(y, x), charge, max(extra, 0.0) / C_M_PER_NS, origin_m)


def track_dphi(r_from: float, r_to: float, pt: float, charge: int) -> float:
    """Position angle at radius ``r_to`` of a track leaving radius ``r_from`` radially (nan if it curls back)."""
    hit = _arc(r_from, 0.0, 0.0, pt, charge, r_to)
    return math.atan2(hit[1], hit[0]) if hit is not None else float("nan")


def _radial(rng: np.random.Generator, n: int) -> np.ndarray:
    """Radii (crystal widths) of ``n`` spots from the two-component profile (inverse CDF ``R sqrt(u / (1 - u))``)."""
    u = rng.random(n)
    radius = np.where(rng.random(n) < CORE_FRACTION, CORE_RADIUS, TAIL_RADIUS)
    return radius * np.sqrt(u / np.maximum(1.0 - u, 1e-9))


def deposit(canvas: np.ndarray, times: np.ndarray, ieta: float, iphi: float, energy: float, delay_ns: float,
            rng: np.random.Generator) -> None:
    """Shower ``energy`` GeV centred at crystal coordinates (``ieta``, ``iphi``) into ``canvas`` (and its energy-
    weighted arrival time into ``times``).

    The shower is sampled with about one energy spot per :data:`SPOT_GEV` whose energies are exponentially
    distributed (then scaled to the shower's energy): a crystal's share is continuous, not a multiple of one
    spot's energy."""
    if energy <= 0:
        return
    sigma = math.sqrt(STOCHASTIC ** 2 / energy + CONSTANT ** 2)
    energy = max(energy * (1.0 + sigma * rng.standard_normal()), 0.0)
    n = int(np.clip(energy / SPOT_GEV, MIN_SPOTS, MAX_SPOTS))
    r, a = _radial(rng, n), rng.uniform(0, 2 * math.pi, n)
    weights = rng.exponential(1.0, n)
    weights *= energy / weights.sum()
    e_idx = np.floor(ieta + r * np.cos(a)).astype(np.int64)
    p_idx = np.floor(iphi + r * np.sin(a)).astype(np.int64)
    inside = (e_idx >= 0) & (e_idx < canvas.shape[0]) & (p_idx >= 0) & (p_idx < canvas.shape[1])
    flat = e_idx[inside] * canvas.shape[1] + p_idx[inside]
    summed = np.bincount(flat, weights=weights[inside], minlength=canvas.size).reshape(canvas.shape)
    canvas += summed
    times += summed * delay_ns


def digitise(canvas: np.ndarray, times: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noise, zero suppression at 3 sigma, and the timing channel of a deposited canvas."""
    energy = canvas + NOISE_GEV * rng.standard_normal(canvas.shape)
    energy[energy < 3 * NOISE_GEV] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(canvas > 0, times / np.maximum(canvas, 1e-12), 0.0)
    hit = energy > 0
    t_sigma = np.sqrt((TIME_NOISE / np.maximum(energy, 1e-3)) ** 2 + TIME_CONSTANT ** 2)
    t = np.where(hit, t + t_sigma * rng.standard_normal(canvas.shape), 0.0)
    return energy, t


def photon_path(rng: np.random.Generator, energy: float, eta: float, x0: float) -> list[Leg]:
    """What a photon of ``energy`` leaves on the ECAL: itself, or the pair of a conversion (e+ and e- sharing
    its energy, bending apart from the conversion radius; a leg too soft to reach the ECAL is lost)."""
    if rng.random() >= 1.0 - math.exp(-7.0 / 9.0 * x0):
        return [Leg(energy, 0.0, 0, 0.0)]
    r_conv = R_TRACKER * rng.random()
    x = rng.random()
    pt = energy / math.cosh(eta)
    legs = []
    for share, charge in ((x, +1), (1 - x, -1)):
        hit = _arc(r_conv, 0.0, 0.0, share * pt, charge, R_ECAL)
        if hit is not None:
            legs.append(_leg(share * energy, hit[0], hit[1], r_conv + hit[3], charge, eta, r_conv))
    return legs


def electron_path(rng: np.random.Generator, energy: float, eta: float, x0: float, charge: int,
                  n_brem: int = 3) -> list[Leg]:
    """An electron's deposits: its brem photons, each emitted along the electron's direction where it radiates
    (at radii spread over the tracker's material) and flying straight to the ECAL, and the electron itself
    with the energy it kept, its curvature growing after each emission (the transverse momentum it still has).
    The photons land along the electron's arc, between the vertex's direction and the electron's impact: brem
    spreads the deposit in phi, the more the more it radiated."""
    keep = math.exp(-rng.gamma(max(x0 / math.log(2.0), 1e-3), 1.0))
    pt = energy / math.cosh(eta)
    radiated = energy * (1.0 - keep)
    shares = rng.dirichlet(np.ones(n_brem)) * radiated if radiated > 0 else np.zeros(0)
    radii = np.sort(rng.random(len(shares))) * R_TRACKER
    legs: list[Leg] = []
    x = y = psi = path = 0.0
    for share, r in zip(shares, radii):
        hit = _arc(x, y, psi, pt, charge, r)
        if hit is None:  # curled up inside the tracker: what is left never reaches the ECAL
            return legs
        x, y, psi, s = hit
        path += s
        gx, gy, t = _straight(x, y, psi, R_ECAL)
        legs.append(_leg(float(share), gx, gy, path + t, 0, eta))
        pt = max(pt - share / math.cosh(eta), 1e-3)
    hit = _arc(x, y, psi, pt, charge, R_ECAL)
    if hit is not None:
        legs.append(_leg(energy * keep, hit[0], hit[1], path + hit[3], charge, eta))
    return legs


def crop(energy: np.ndarray, times: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` window centred on the most energetic crystal (the published IMGCROPS)."""
    h, w = energy.shape
    i, j = np.unravel_index(int(np.argmax(energy)), energy.shape)
    i0 = int(np.clip(i - size // 2, 0, h - size))
    j0 = int(np.clip(j - size // 2, 0, w - size))
    return energy[i0:i0 + size, j0:j0 + size], times[i0:i0 + size, j0:j0 + size]


def phi_width(images: np.ndarray) -> np.ndarray:
    """Energy-weighted spread in phi (crystals) of each (n, H, W) image: the shower-shape baseline."""
    e = np.clip(images, 0, None)
    w = np.arange(images.shape[2], dtype=np.float64)
    total = e.sum(axis=(1, 2)) + 1e-12
    col = e.sum(axis=1)
    mean = (col * w).sum(axis=1) / total
    return np.sqrt(np.clip((col * (w[None] - mean[:, None]) ** 2).sum(axis=1) / total, 0, None))
