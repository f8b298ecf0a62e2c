"""Electromagnetic showers in a CMS-like barrel ECAL: the detector part of the electron/photon and diphoton
generators (:mod:`hpcvit.data.generate_egamma`, :mod:`hpcvit.data.generate_diphoton`).

A particle leaves the beam line at (eta, phi) in a 3.8 T solenoid, crosses the tracker's material and hits
lead-tungstate crystals of 0.0174 x 0.0174 (eta x phi) at 1.29 m:

* material: ``x0(eta)`` radiation lengths before the ECAL (0.4 X0 at eta 0 rising to 1.0 X0 at |eta| 1.4,
  roughly CMS's tracker); a photon converts with probability ``1 - exp(-7/9 x0)`` at a depth drawn along its
  path, into an e+ e- pair sharing its energy (uniform split);
* electrons radiate: the energy fraction they keep after t X0 follows Bethe-Heitler, ``-ln z ~ Gamma(t / ln
  2)``; the radiated energy leaves as photons along the tangent at the emission radius, while the electron
  curls further in phi (bending radius ``pT / (0.3 B)``), so brem spreads the deposit along phi;
* each particle reaching the ECAL showers with a two-component (core + tail) radial profile in Moliere radii
  (Grindhammer's form ``2 r R^2 / (r^2 + R^2)^2``; R_M = 2.19 cm, one crystal), sampled with energy spots;
  energy resolution 2.8 %/sqrt(E) (+) 0.3 %; electronic noise 40 MeV per crystal, crystals below 3 sigma
  read 0; the timing channel holds the arrival time (path length over c, relative to a straight photon)
  smeared by ``0.4 ns GeV / E (+) 0.07 ns`` in crystals with energy, 0 elsewhere.
"""

from __future__ import annotations

import math

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
SPOTS = 300
"""Energy spots sampled per shower."""
STOCHASTIC, CONSTANT = 0.028, 0.003
NOISE_GEV = 0.04
TIME_NOISE, TIME_CONSTANT = 0.4, 0.07


def material_x0(eta: np.ndarray) -> np.ndarray:
    """Radiation lengths of tracker material before the ECAL at pseudorapidity ``eta``."""
    return 0.4 + 0.6 * np.clip(np.abs(eta) / 1.4, 0.0, 1.0) ** 2


def bending_radius(pt: float) -> float:
    """Radius of curvature in metres of a particle of transverse momentum ``pt`` GeV in the solenoid."""
    return pt / (0.3 * B_FIELD)


def impact_dphi(r0: float, pt: float, charge: int) -> float:
    """Change of the position angle between radius ``r0`` and the ECAL for a particle leaving ``r0`` tangentially
    (approximately: the arc from ``r0`` to ``R_ECAL`` on a circle of radius ``pt / 0.3B``)."""
    radius = bending_radius(max(pt, 1e-3))
    return -charge * (math.asin(min(R_ECAL / (2 * radius), 1.0)) - math.asin(min(r0 / (2 * radius), 1.0)))


def _radial(rng: np.random.Generator, n: int) -> np.ndarray:
    """Radii (crystal widths) of ``n`` spots from the two-component profile (inverse CDF ``R sqrt(u / (1 - u))``)."""
    u = rng.random(n)
    radius = np.where(rng.random(n) < CORE_FRACTION, CORE_RADIUS, TAIL_RADIUS)
    return radius * np.sqrt(u / np.maximum(1.0 - u, 1e-9))


def deposit(canvas: np.ndarray, times: np.ndarray, ieta: float, iphi: float, energy: float, delay_ns: float,
            rng: np.random.Generator) -> None:
    """Shower ``energy`` GeV centred at crystal coordinates (``ieta``, ``iphi``) into ``canvas`` (and its energy-
    weighted arrival time into ``times``)."""
    if energy <= 0:
        return
    sigma = math.sqrt(STOCHASTIC ** 2 / energy + CONSTANT ** 2)
    energy = max(energy * (1.0 + sigma * rng.standard_normal()), 0.0)
    r, a = _radial(rng, SPOTS), rng.uniform(0, 2 * math.pi, SPOTS)
    e_idx = np.floor(ieta + r * np.cos(a)).astype(np.int64)
    p_idx = np.floor(iphi + r * np.sin(a)).astype(np.int64)
    inside = (e_idx >= 0) & (e_idx < canvas.shape[0]) & (p_idx >= 0) & (p_idx < canvas.shape[1])
    np.add.at(canvas, (e_idx[inside], p_idx[inside]), energy / SPOTS)
    np.add.at(times, (e_idx[inside], p_idx[inside]), energy / SPOTS * delay_ns)


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


def photon_path(rng: np.random.Generator, energy: float, eta: float, x0: float) -> list[tuple[float, float, int]]:
    """What a photon of ``energy`` leaves on the ECAL: [(energy, dphi, charge)]; one entry, or the pair of a
    conversion (e+ and e- bending apart from the conversion radius)."""
    if rng.random() >= 1.0 - math.exp(-7.0 / 9.0 * x0):
        return [(energy, 0.0, 0)]
    r_conv = R_TRACKER * rng.random()
    x = rng.random()
    pt = energy / math.cosh(eta)
    return [(x * energy, impact_dphi(r_conv, x * pt, +1), +1),
            ((1 - x) * energy, impact_dphi(r_conv, (1 - x) * pt, -1), -1)]


def electron_path(rng: np.random.Generator, energy: float, eta: float, x0: float, charge: int,
                  n_brem: int = 3) -> list[tuple[float, float, int]]:
    """An electron's deposits: the electron itself (with the energy it kept, curled to its impact) and its brem
    photons (emitted along the tangent at radii spread over the tracker)."""
    keep = math.exp(-rng.gamma(max(x0 / math.log(2.0), 1e-3), 1.0))
    pt0 = energy / math.cosh(eta)
    out = []
    radiated = energy * (1.0 - keep)
    if radiated > 0:
        shares = rng.dirichlet(np.ones(n_brem)) * radiated
        radii = np.sort(rng.random(n_brem)) * R_TRACKER
        pt_now = pt0
        for share, r in zip(shares, radii):
            # position angle at r plus the tangent's offset to the ECAL (a straight line from r)
            radius = bending_radius(pt_now)
            pos = -charge * math.asin(min(r / (2 * radius), 1.0))
            tangent = -charge * 2 * math.asin(min(r / (2 * radius), 1.0))
            out.append((float(share), pos + (tangent - pos) * (1 - r / R_ECAL), 0))
            pt_now = max(pt_now - share / math.cosh(eta), 1e-3)
    out.append((energy * keep, impact_dphi(0.0, pt0 * max(keep, 1e-3) ** 0.5, charge), charge))
    return out


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
