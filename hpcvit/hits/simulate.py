"""One event of calorimeter hits: particles from a jet-like cone through :mod:`hpcvit.hits.detector`.

Every particle leaves energy *spots* (positions with an energy and a time); spots are summed into cells per
particle, a cell's label is its largest contributor and its three largest shares are kept as fractions. Cells
below half a MIP are dropped; noise cells are added around the jet. Each event draws from its own generator,
seeded by (run seed, event number), so an event is the same whichever worker makes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hpcvit.hits import detector as D

# (|pdg|, charge sign, mass GeV, share of the particles): a jet's mix, photons from pi0 decays
SPECIES = ((22, 0, 0.0, 0.30), (211, 1, 0.1396, 0.38), (321, 1, 0.4937, 0.05), (2212, 1, 0.9383, 0.03),
           (130, 0, 0.4976, 0.09), (2112, 0, 0.9396, 0.07), (11, 1, 0.000511, 0.05), (13, 1, 0.1057, 0.03))


@dataclass(frozen=True)
class EventConfig:
    """What one event is made of."""

    jet_energy: tuple[float, float] = (20.0, 60.0)
    """The jet's energy (GeV), uniform in this range, shared among its particles."""
    particles: tuple[int, int] = (3, 10)
    """Particles per event, uniform in this range (both ends included)."""
    cone: float = 0.12
    """Angular spread (rad, Gaussian) of the particles around the jet axis: smaller means more overlap."""
    eta_max: float = 0.8
    """|eta| of the jet axis (the barrel)."""
    noise: float = 15.0
    """Mean number of noise cells per event, around the jet."""
    min_energy: float = 0.3
    """No particle below this energy (GeV)."""
    ecal_cell_mm: float = D.ECAL_CELL_MM
    """ECAL cell size (mm); coarser cells mean fewer hits (a CPU-sized study), the showers are the same."""
    hcal_cell_mm: float = D.HCAL_CELL_MM
    """HCAL tile size (mm)."""


@dataclass
class Deposits:
    """Spots of every particle of an event."""

    pos: list[np.ndarray] = field(default_factory=list)
    energy: list[np.ndarray] = field(default_factory=list)
    time: list[np.ndarray] = field(default_factory=list)
    owner: list[np.ndarray] = field(default_factory=list)

    def add(self, pos: np.ndarray, energy: np.ndarray, time: np.ndarray, owner: int) -> None:
        self.pos.append(pos)
        self.energy.append(energy)
        self.time.append(time)
        self.owner.append(np.full(len(energy), owner, dtype=np.int64))


def _frame(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to ``direction`` and to each other."""
    helper = np.array([0.0, 0.0, 1.0]) if abs(direction[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(direction, helper)
    u /= np.linalg.norm(u)
    return u, np.cross(direction, u)


def _place(entry: np.ndarray, direction: np.ndarray, radial_mm: np.ndarray, lateral_mm: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """Points ``radial_mm`` behind the ECAL front along ``direction`` from ``entry``, ``lateral_mm`` off axis."""
    radial = entry[:2] / max(np.linalg.norm(entry[:2]), 1e-9)
    cos_a = max(float(direction[:2] @ radial), 0.3)
    u, v = _frame(direction)
    psi = rng.uniform(0, 2 * math.pi, len(radial_mm))
    return (entry + np.outer(radial_mm / cos_a, direction) + np.outer(lateral_mm * np.cos(psi), u)
            + np.outer(lateral_mm * np.sin(psi), v))


def _mip_track(entry: np.ndarray, direction: np.ndarray, until_mm: float, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """MIP deposits (positions, energies) in every layer crossed before ``until_mm`` behind the ECAL front."""
    depths, energies = [], []
    for det, n, pitch, start in ((D.ECAL, D.ECAL_LAYERS, D.ECAL_LAYER_MM, 0.0),
                                 (D.HCAL, D.HCAL_LAYERS, D.HCAL_LAYER_MM, D.HCAL_RADIUS_MM - D.ECAL_RADIUS_MM)):
        d = start + (np.arange(n) + 0.5) * pitch
        d = d[d < until_mm]
        depths.append(d)
        energies.append(D.MIP_GEV[det] * rng.lognormal(0.0, 0.3, len(d)))
    radial = np.concatenate(depths)
    return _place(entry, direction, radial, np.zeros(len(radial)), rng), np.concatenate(energies)


def _shower(kind: int, energy: float, entry: np.ndarray, direction: np.ndarray, rng: np.random.Generator,
            out: Deposits, owner: int, t0: float) -> None:
    """The calorimeter deposits of one particle of type ``kind`` (|pdg|) entering at ``entry``."""
    if kind in (22, 11):
        start = rng.exponential(9 / 7) if kind == 22 else 0.0
        depth_x0, lateral_rm, e = D.em_spots(rng, energy, start, photon=kind == 22)
        radial = D.x0_depth(0.0, depth_x0)
        pos = _place(entry, direction, radial, lateral_rm * D.MOLIERE_MM[D.ECAL], rng)
        out.add(pos, e, t0 + radial / D.C_MM_PER_NS, owner)
        return
    if kind == 13:
        pos, e = _mip_track(entry, direction, 1e9, rng)
        out.add(pos, e, t0 + np.linalg.norm(pos - entry, axis=1) / D.C_MM_PER_NS, owner)
        return
    first = rng.exponential(1.0)  # interaction lengths to the first interaction
    start_mm = float(D.material_depth(np.array([first]))[0])
    if kind in (211, 321, 2212):  # a charged hadron ionises up to its first interaction
        pos, e = _mip_track(entry, direction, start_mm, rng)
        if len(e):
            out.add(pos, e, t0 + np.linalg.norm(pos - entry, axis=1) / D.C_MM_PER_NS, owner)
    s = D.hadron_spots(rng, energy)
    em_radial = D.x0_depth(start_mm, s["em_depth_x0"])
    medium = D.ECAL if start_mm < D.ECAL_LAYERS * D.ECAL_LAYER_MM else D.HCAL
    for radial, lateral, e, delay in (
            (em_radial, s["em_lateral_rm"] * D.MOLIERE_MM[medium], s["em_e"], 0.0),
            (D.material_depth(first + s["had_depth_lambda"]), s["had_lateral_mm"], s["had_e"], 0.0),
            (D.material_depth(first + s["slow_depth_lambda"]), s["slow_lateral_mm"], s["slow_e"], s["slow_delay_ns"])):
        pos = _place(entry, direction, radial, lateral, rng)
        out.add(pos, e, t0 + radial / D.C_MM_PER_NS + delay, owner)


def _cells(dep: Deposits, rng: np.random.Generator, ecal_mm: float, hcal_mm: float) -> dict[str, np.ndarray]:
    """Spots summed into cells per particle: each cell's energy, position (its centre), time, largest contributor
    and three largest shares (particle, fraction)."""
    pos, energy = np.concatenate(dep.pos), np.concatenate(dep.energy)
    time, owner = np.concatenate(dep.time), np.concatenate(dep.owner)
    r = np.hypot(pos[:, 0], pos[:, 1])
    det, layer = D.cell_of(r - D.ECAL_RADIUS_MM)
    inside = det >= 0
    pos, energy, time, owner, det, layer = pos[inside], energy[inside], time[inside], owner[inside], det[inside], \
        layer[inside]
    size = np.where(det == D.ECAL, ecal_mm, hcal_mm)
    r_layer = np.where(det == D.ECAL, D.layer_radius(D.ECAL, layer), D.layer_radius(D.HCAL, layer))
    phi = np.arctan2(pos[:, 1], pos[:, 0])
    i_phi = np.floor(phi * r_layer / size).astype(np.int64)
    i_z = np.floor(pos[:, 2] / size).astype(np.int64)
    keys = np.stack([det, layer, i_phi, i_z], axis=1)
    cells, cell = np.unique(keys, axis=0, return_inverse=True)
    cell = cell.reshape(-1)
    n_owner = int(owner.max()) + 1 if len(owner) else 1
    share = np.zeros((len(cells), n_owner))
    np.add.at(share, (cell, owner), energy)
    total = share.sum(axis=1)
    t = np.zeros(len(cells))
    np.add.at(t, cell, time * energy)
    t = t / np.maximum(total, 1e-12) + rng.normal(0, 0.1, len(cells))
    c_det, c_layer = cells[:, 0], cells[:, 1]
    c_size = np.where(c_det == D.ECAL, ecal_mm, hcal_mm)
    c_r = np.where(c_det == D.ECAL, D.layer_radius(D.ECAL, c_layer), D.layer_radius(D.HCAL, c_layer))
    c_phi = (cells[:, 2] + 0.5) * c_size / c_r
    order = np.argsort(-share, axis=1)[:, :3]
    top = np.take_along_axis(share, order, axis=1) / np.maximum(total, 1e-12)[:, None]
    fractions = np.full((len(cells), 6), -1.0)
    for j in range(min(3, n_owner)):
        has = top[:, j] > 0
        fractions[has, 2 * j] = order[has, j]
        fractions[has, 2 * j + 1] = top[has, j]
    return {"energy": total, "x": c_r * np.cos(c_phi), "y": c_r * np.sin(c_phi), "z": (cells[:, 3] + 0.5) * c_size,
            "t": t, "det": c_det, "owner": order[:, 0], "fractions": fractions}


def make_event(seed: int, index: int, cfg: EventConfig) -> dict[str, np.ndarray | float | int]:
    """Event ``index`` of run ``seed``: per hit ``features`` (E, x, y, z, t, subdetector, is_track), ``labels``
    (charge, |pdg|, E, direction of the hit's particle), ``particle`` and ``fractions``; event-level numbers."""
    rng = np.random.default_rng([seed, index])
    n = int(rng.integers(cfg.particles[0], cfg.particles[1] + 1))
    e_jet = float(rng.uniform(*cfg.jet_energy))
    shares = rng.dirichlet(np.full(n, 0.9))
    energies = np.maximum(cfg.min_energy, shares * e_jet)
    eta = rng.uniform(-cfg.eta_max, cfg.eta_max)
    theta_j, phi_j = 2 * math.atan(math.exp(-eta)), rng.uniform(-math.pi, math.pi)
    p_species = np.array([s[3] for s in SPECIES])
    kinds = rng.choice(len(SPECIES), n, p=p_species / p_species.sum())
    dep, tracks, labels, entries = Deposits(), [], [], []
    for j in range(n):
        pdg, charged, mass, _ = SPECIES[kinds[j]]
        charge = float(charged * (1 if rng.random() < 0.5 else -1))
        theta = theta_j + rng.normal(0, cfg.cone)
        phi = phi_j + rng.normal(0, cfg.cone) / max(math.sin(theta_j), 0.3)
        e = float(energies[j])
        p = math.sqrt(max(e * e - mass * mass, 1e-6))
        d0 = np.array([math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta)])
        labels.append([charge, pdg, e, *d0])
        px, py, pz = p * d0
        if charge:
            r = np.linspace(*D.TRACKER_MM, D.TRACK_POINTS)
            x, y, z, _ = D.helix(px, py, pz, charge, r)
            ok = np.isfinite(x)
            tracks.append((j, np.stack([x[ok], y[ok], z[ok]], axis=1), p))
        x, y, z, phi_dir = D.helix(px, py, pz, charge, np.array([D.ECAL_RADIUS_MM]))
        if not np.isfinite(x[0]):  # curls up inside the tracker: no calorimeter deposit
            entries.append(None)
            continue
        entry = np.array([x[0], y[0], z[0]])
        direction = np.array([math.sin(theta) * math.cos(phi_dir[0]), math.sin(theta) * math.sin(phi_dir[0]),
                              math.cos(theta)])
        entries.append(entry)
        _shower(pdg, e, entry, direction, rng, dep, j, float(np.linalg.norm(entry)) / D.C_MM_PER_NS)
    hits = _cells(dep, rng, cfg.ecal_cell_mm, cfg.hcal_cell_mm) if dep.energy else {**{k: np.zeros(0) for k in ("energy", "x", "y", "z", "t", "det", "owner")},
                                                "fractions": np.zeros((0, 6))}
    threshold = np.where(hits["det"] == D.ECAL, D.MIP_GEV[D.ECAL], D.MIP_GEV[D.HCAL]) * D.THRESHOLD_MIP
    keep = hits["energy"] >= threshold
    cal = {k: v[keep] for k, v in hits.items()}
    noise = _noise(rng, cfg, theta_j, phi_j)
    feats = [np.stack([cal["energy"], cal["x"], cal["y"], cal["z"], cal["t"], cal["det"], np.zeros(keep.sum())], 1),
             noise]
    owners = [cal["owner"], np.full(len(noise), n)]
    fractions = [cal["fractions"], np.tile([n, 1.0, -1, -1, -1, -1], (len(noise), 1))]
    for j, points, p in tracks:
        t = np.linalg.norm(points, axis=1) / D.C_MM_PER_NS
        feats.append(np.column_stack([np.full(len(points), p), points, t, np.zeros(len(points)),
                                      np.ones(len(points))]))
        owners.append(np.full(len(points), j))
        fractions.append(np.tile([j, 1.0, -1, -1, -1, -1], (len(points), 1)))
    particle = np.concatenate(owners).astype(np.int32)
    label_rows = np.array(labels + [[0, 0, 0, 0, 0, 0]], dtype=np.float64)
    front = [e for e in entries if e is not None]
    gaps = [np.linalg.norm(a - b) for i, a in enumerate(front) for b in front[i + 1:]]
    return {"features": np.concatenate(feats).astype(np.float32), "labels": label_rows[particle].astype(np.float32),
            "particle": particle, "fractions": np.concatenate(fractions).astype(np.float32),
            "n_particles": n, "jet_energy": e_jet, "jet_eta": eta, "jet_phi": phi_j,
            "n_noise": len(noise), "min_distance": float(min(gaps)) if gaps else float("inf")}


def _noise(rng: np.random.Generator, cfg: EventConfig, theta_j: float, phi_j: float) -> np.ndarray:
    """Noise cells around the jet: a random layer and cell, an energy just above threshold."""
    k = int(rng.poisson(cfg.noise))
    det = np.where(rng.random(k) < 0.7, D.ECAL, D.HCAL)
    layer = np.where(det == D.ECAL, rng.integers(0, D.ECAL_LAYERS, k), rng.integers(0, D.HCAL_LAYERS, k))
    r = np.where(det == D.ECAL, D.layer_radius(D.ECAL, layer), D.layer_radius(D.HCAL, layer))
    phi = phi_j + rng.uniform(-0.3, 0.3, k)
    z = r / math.tan(theta_j) + rng.uniform(-300, 300, k)
    mip = np.where(det == D.ECAL, D.MIP_GEV[D.ECAL], D.MIP_GEV[D.HCAL])
    energy = mip * D.THRESHOLD_MIP * (1 + rng.exponential(0.5, k))
    return np.stack([energy, r * np.cos(phi), r * np.sin(phi), z, rng.normal(0, 1.0, k) + r / D.C_MM_PER_NS, det,
                     np.zeros(k)], axis=1)
