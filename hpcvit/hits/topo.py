"""The classical baseline: topological clustering of adjacent calorimeter cells above threshold.

Pandora's first step, and what a learnt method must beat: hits above a threshold are linked to every hit within
a neighbourhood (the next cell in the same or an adjacent layer of the same calorimeter; across the ECAL/HCAL
boundary within an HCAL cell) and each connected group is one cluster. Track hits are not clustered. The
neighbourhood is measured from the event itself (:data:`LINK` times the median distance from a hit to its
nearest neighbour in the same calorimeter: one cell or layer pitch), so no geometry needs to be known.
"""

from __future__ import annotations

import numpy as np

from hpcvit.hits import detector

LINK = 1.6


def clusters(position: np.ndarray, subdetector: np.ndarray, energy: np.ndarray,
             threshold: float = 0.0) -> np.ndarray:
    """A cluster number for each hit (``-1`` below ``threshold`` or a track hit): the connected groups of
    neighbouring hits."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(energy)
    use = (energy > threshold) & (subdetector != detector.TRACKER)
    idx = np.flatnonzero(use)
    out = np.full(n, -1, dtype=np.int64)
    if not len(idx):
        return out
    pos = position[idx]
    sub = subdetector[idx]
    pairs = []
    radius = {}
    for det in (detector.ECAL, detector.HCAL):
        sel = np.flatnonzero(sub == det)
        if len(sel) > 1:
            tree = cKDTree(pos[sel])
            radius[det] = LINK * max(float(np.median(tree.query(pos[sel], k=2)[0][:, 1])), 1.0)
            pairs.append(sel[tree.query_pairs(radius[det], output_type="ndarray")])
    e_sel, h_sel = np.flatnonzero(sub == detector.ECAL), np.flatnonzero(sub == detector.HCAL)
    if len(e_sel) and len(h_sel):
        near = cKDTree(pos[h_sel]).query_ball_point(pos[e_sel], radius.get(detector.HCAL, 50.0))
        links = [(e_sel[i], h_sel[j]) for i, js in enumerate(near) for j in js]
        if links:
            pairs.append(np.asarray(links, dtype=np.int64))
    edges = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(idx), len(idx)))
    _, labels = connected_components(graph, directed=False)
    out[idx] = labels
    return out
