"""How well hits were clustered, as particle-flow studies measure it.

Per event, truth particles and predicted clusters are matched by the energy they share: ``O[j, k]`` is the
calorimeter energy of the hits of particle ``j`` put in cluster ``k``. A particle's *match* is a cluster that
holds more than half of its energy; it is *found* when it is also the main particle of that cluster (one
cluster holding every hit finds one particle, not all); two particles with the same match are *merged*; a
particle is *split* when two or more clusters take it as their main particle, each with at least
:data:`SPLIT_MIN` of its energy. Purity is a cluster's share of energy from its main particle (energy-weighted
over clusters). The adjusted Rand index scores the hit assignment itself. Noise hits (no particle) belong to no
truth cluster: they count against the purity of the clusters they join. Track hits are left out (their number
is a momentum, not a deposit).

Every per-particle quantity can be binned in the particle's energy and in the distance from its calorimeter
deposit's centroid to the nearest other particle's, where overlapping showers make clustering hard.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpcvit.hits.models import TYPES

MATCH = 0.5
SPLIT_MIN = 0.1
CLOSE_MM = 100.0
"""Particles closer than this (centroid to centroid) to another are *close*: ``efficiency_close`` is theirs."""
ENERGY_BINS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, np.inf)
DISTANCE_BINS = (0.0, 20.0, 50.0, 100.0, 200.0, 500.0, np.inf)


@dataclass
class Event:
    """One event's calorimeter hits: energy, position (mm), truth particle, predicted cluster; truth type and
    energy of each particle; predicted type probabilities of each cluster (or None)."""

    energy: np.ndarray
    position: np.ndarray
    truth: np.ndarray
    pred: np.ndarray
    truth_type: np.ndarray
    truth_energy: np.ndarray
    pred_types: np.ndarray | None = None


def _dense(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, inverse = np.unique(labels, return_inverse=True)
    return values, inverse.reshape(-1)


def event_table(ev: Event) -> dict[str, np.ndarray]:
    """Per truth particle of the event (noise left out): its deposited energy, true energy, type, distance to the
    nearest other particle, whether found, split, merged; the energy share of its match; the match's energy and
    predicted type probabilities. Plus per cluster: energy and purity."""
    real = ev.truth >= 0
    t_ids, t_idx = _dense(np.where(real, ev.truth, -1))
    p_ids, p_idx = _dense(ev.pred)
    overlap = np.zeros((len(t_ids), len(p_ids)))
    np.add.at(overlap, (t_idx, p_idx), ev.energy)
    noise_row = np.flatnonzero(t_ids < 0)
    keep = np.flatnonzero(t_ids >= 0)
    particle_overlap = overlap[keep]
    truth_e = particle_overlap.sum(axis=1)
    cluster_e = overlap.sum(axis=0)
    out: dict[str, np.ndarray] = {}
    if len(keep):
        best = particle_overlap.argmax(axis=1)
        share = particle_overlap[np.arange(len(keep)), best] / np.maximum(truth_e, 1e-12)
        has_match = share > MATCH
        matched = np.where(has_match, best, -1)
        taken = np.bincount(matched[has_match], minlength=len(p_ids)) if has_match.any() else \
            np.zeros(len(p_ids), int)
        merged = has_match & (taken[np.maximum(matched, 0)] > 1)
        main = particle_overlap.argmax(axis=0)  # each cluster's main particle
        found = has_match & (main[np.maximum(matched, 0)] == np.arange(len(keep)))
        counts = np.zeros(len(keep), int)
        strong = particle_overlap[main, np.arange(len(p_ids))] >= SPLIT_MIN * truth_e[main]
        np.add.at(counts, main[strong], 1)
        # centroids of the particles' deposits, and the distance to the nearest other
        cent = np.zeros((len(keep), 3))
        w = np.zeros(len(keep))
        rows = t_idx[real]
        np.add.at(cent, rows - (len(noise_row)), ev.position[real] * ev.energy[real, None])
        np.add.at(w, rows - (len(noise_row)), ev.energy[real])
        cent /= np.maximum(w, 1e-12)[:, None]
        if len(keep) > 1:
            d = np.linalg.norm(cent[:, None] - cent[None], axis=-1)
            np.fill_diagonal(d, np.inf)
            nearest = d.min(axis=1)
        else:
            nearest = np.full(len(keep), np.inf)
        ids = t_ids[keep].astype(int)
        out.update(deposit=truth_e, true_energy=ev.truth_energy[ids], type=ev.truth_type[ids], nearest=nearest,
                   found=found, merged=merged, split=counts >= 2, share=share,
                   match_energy=np.where(found, cluster_e[np.maximum(matched, 0)], np.nan))
        if ev.pred_types is not None:
            out["match_types"] = np.where(found[:, None], ev.pred_types[p_ids[np.maximum(matched, 0)].astype(int)],
                                          np.nan)
    purity = overlap[keep].max(axis=0) / np.maximum(cluster_e, 1e-12) if len(keep) else np.zeros(len(p_ids))
    out.update(cluster_energy=cluster_e, cluster_purity=purity)
    return out


def adjusted_rand(truth: np.ndarray, pred: np.ndarray) -> float:
    """The adjusted Rand index of two labelings of the same hits (1: the same partition; about 0: chance)."""
    _, a = _dense(truth)
    _, b = _dense(pred)
    n = len(a)
    if n < 2:
        return 1.0
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    comb = lambda x: x * (x - 1) / 2  # noqa: E731
    index = comb(table).sum()
    rows, cols = comb(table.sum(1)).sum(), comb(table.sum(0)).sum()
    expected = rows * cols / comb(n)
    top = (rows + cols) / 2
    return 1.0 if top == expected else float((index - expected) / (top - expected))


def summarize(events: list[Event]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The metrics over events, and the per-particle table they come from (for binned plots)."""
    tables = [event_table(ev) for ev in events]
    particle_keys = ("deposit", "true_energy", "type", "nearest", "found", "merged", "split", "share",
                     "match_energy")
    flat = {k: np.concatenate([t[k] for t in tables if k in t]) if any(k in t for t in tables) else np.zeros(0)
            for k in particle_keys}
    c_e = np.concatenate([t["cluster_energy"] for t in tables]) if tables else np.zeros(0)
    c_p = np.concatenate([t["cluster_purity"] for t in tables]) if tables else np.zeros(0)
    metrics = {"efficiency": _mean(flat["found"]), "merge_rate": _mean(flat["merged"]),
               "split_rate": _mean(flat["split"]),
               "purity": float((c_e * c_p).sum() / c_e.sum()) if c_e.sum() > 0 else float("nan"),
               "ari": _mean(np.array([adjusted_rand(e.truth, e.pred) for e in events])),
               "efficiency_close": _mean(flat["found"][flat["nearest"] < CLOSE_MM]) if len(flat["nearest"]) else
               float("nan")}
    found = flat["found"].astype(bool)
    rel = (flat["match_energy"][found] - flat["deposit"][found]) / np.maximum(flat["deposit"][found], 1e-12)
    metrics["energy_resolution"] = float((np.quantile(rel, 0.84) - np.quantile(rel, 0.16)) / 2) if len(rel) > 2 \
        else float("nan")
    if any("match_types" in t for t in tables):
        probs = np.concatenate([t["match_types"] for t in tables if "match_types" in t])
        ok = found & (flat["type"] != TYPES.index("noise"))
        metrics["pid_accuracy"] = _mean(probs[ok].argmax(axis=1) == flat["type"][ok]) if ok.any() else float("nan")
        metrics["photon_nh_auc"] = _photon_auc(probs[found], flat["type"][found])
        flat["pred_type"] = np.where(found, np.nan_to_num(probs, nan=-1).argmax(axis=1), -1)
    return metrics, flat


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _photon_auc(probs: np.ndarray, types: np.ndarray) -> float:
    """ROC-AUC of photon vs neutral hadron among found particles of those types, by p(photon) / (p(photon) +
    p(neutral hadron))."""
    g, n = TYPES.index("photon"), TYPES.index("neutral_hadron")
    sel = (types == g) | (types == n)
    y = (types[sel] == g).astype(float)
    if not 0 < y.sum() < len(y):
        return float("nan")
    from sklearn.metrics import roc_auc_score

    score = probs[sel, g] / np.maximum(probs[sel, g] + probs[sel, n], 1e-12)
    return float(roc_auc_score(y, score))


def binned(flat: dict[str, np.ndarray], key: str, bins: tuple[float, ...]) -> list[dict[str, float]]:
    """Efficiency, merge and split rates of the particles in each bin of ``key`` (``true_energy``, ``nearest``)."""
    rows = []
    values = flat[key]
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (values >= lo) & (values < hi)
        rows.append({"lo": lo, "hi": hi, "n": int(sel.sum()), "efficiency": _mean(flat["found"][sel]),
                     "merge_rate": _mean(flat["merged"][sel]), "split_rate": _mean(flat["split"][sel])})
    return rows
