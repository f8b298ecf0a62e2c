"""From model outputs (or the baseline's clusters) to the events :mod:`hpcvit.hits.metrics` scores, and the
figures of a finished run: efficiency and purity binned in energy and separation, model beside the topological
baseline, and event displays."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit.hits import metrics as M
from hpcvit.hits import topo
from hpcvit.hits.detector import TRACKER
from hpcvit.hits.models import TYPES

_CHARGED_HADRONS = (211, 321, 2212)
_NEUTRAL_HADRONS = (130, 310, 2112, 3122)


def types_of(abs_pdg: np.ndarray, charge: np.ndarray) -> np.ndarray:
    """:data:`TYPES` index from |pdg| and charge (numpy twin of :func:`hpcvit.hits.matching.particle_type`)."""
    t = np.where(charge != 0, TYPES.index("charged_hadron"), TYPES.index("neutral_hadron"))
    for pdg, name in ((22, "photon"), (11, "electron"), (13, "muon")):
        t = np.where(abs_pdg == pdg, TYPES.index(name), t)
    return np.where(abs_pdg == 0, TYPES.index("noise"), t)


class Columns:
    """Where the numbers the metrics need sit in a hit's raw row."""

    def __init__(self, names: list[str]):
        self.energy = names.index("E")
        self.position = [names.index(c) for c in ("x", "y", "z")] if {"x", "y", "z"} <= set(names) else None
        self.subdetector = names.index("subdetector") if "subdetector" in names else None
        self.track = names.index("is_track") if "is_track" in names else None


def event(raw: np.ndarray, particle: np.ndarray, labels: np.ndarray, pred: np.ndarray, pred_types: np.ndarray | None,
          cols: Columns) -> M.Event:
    """One event's calorimeter hits as the metrics see them (track hits left out; noise hits have truth -1)."""
    calo = raw[:, cols.track] != 1 if cols.track is not None else np.ones(len(raw), bool)
    n_p = int(particle.max()) + 1 if len(particle) else 0
    p_energy, p_type = np.zeros(n_p), np.full(n_p, TYPES.index("noise"))
    p_energy[particle] = labels[:, 2]
    p_type[particle] = types_of(labels[:, 1], labels[:, 0])
    truth = np.where(labels[:, 1] == 0, -1, particle)
    pos = raw[:, cols.position] if cols.position is not None else np.zeros((len(raw), 3))
    return M.Event(raw[calo, cols.energy].astype(np.float64), pos[calo].astype(np.float64), truth[calo], pred[calo],
                   p_type, p_energy, pred_types)


def baseline(raw: np.ndarray, cols: Columns) -> np.ndarray:
    """The topological clusters of an event's hits, the neighbourhood measured from the event itself."""
    pos = raw[:, cols.position] if cols.position is not None else np.zeros((len(raw), 3))
    sub = raw[:, cols.subdetector].astype(int) if cols.subdetector is not None else np.ones(len(raw), int)
    if cols.track is not None:
        sub = np.where(raw[:, cols.track] == 1, TRACKER, sub)
    return topo.clusters(pos, sub, raw[:, cols.energy])


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def binned_figure(out: Path, tables: dict[str, dict[str, np.ndarray]], split: str) -> list[Path]:
    """Efficiency, merge and split rates vs particle energy and vs distance to the nearest particle, one line per
    method (the model, the topological baseline); CSV beside the PNG/PDF."""
    from hpcvit.objectives.figures import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    rows = []
    for ax, key, bins, label in ((axes[0], "true_energy", M.ENERGY_BINS, "particle energy (GeV)"),
                                 (axes[1], "nearest", M.DISTANCE_BINS, "distance to the nearest particle (mm)")):
        for method, flat in tables.items():
            b = M.binned(flat, key, bins)
            rows += [{"method": method, "variable": key, **r} for r in b]
            centres = [r["lo"] if not np.isfinite(r["hi"]) else (r["lo"] + r["hi"]) / 2 for r in b]
            ax.plot(centres, [r["efficiency"] for r in b], "o-", label=f"{method}: efficiency")
            ax.plot(centres, [r["merge_rate"] for r in b], "x:", label=f"{method}: merged")
        ax.set(xlabel=label, ylabel="fraction of particles", ylim=(0, 1.02), title=split)
        ax.set_xscale("symlog")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    written = save(fig, out / "efficiency_binned.png")
    plt.close(fig)
    return [write_csv(out / "efficiency_binned.csv", rows), *written]


def display(out: Path, raw: np.ndarray, truth: np.ndarray, pred: np.ndarray, base: np.ndarray, cols: Columns,
            name: str) -> list[Path]:
    """One event three times, hits coloured by truth, by the model, by the baseline (phi-z view)."""
    from hpcvit.objectives.figures import pyplot, save

    if cols.position is None:
        return []
    plt = pyplot()
    x, y, z = raw[:, cols.position].T
    phi = np.arctan2(y, x)
    size = 4 + 30 * np.sqrt(raw[:, cols.energy] / max(raw[:, cols.energy].max(), 1e-9))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), sharex=True, sharey=True)
    for ax, labels, title in zip(axes, (truth, pred, base), ("truth", "model", "topological baseline")):
        ax.scatter(z, phi, c=np.mod(labels, 20), cmap="tab20", s=size, vmin=0, vmax=19, alpha=0.7)
        ax.set(title=f"{title} ({len(np.unique(labels))} clusters)", xlabel="z (mm)")
    axes[0].set_ylabel("phi (rad)")
    fig.tight_layout()
    written = save(fig, out / f"{name}.png")
    plt.close(fig)
    return written
