"""What a hit model's outputs mean, by its ``head`` (:mod:`hpcvit.hits.models`): the loss against the truth and
the clusters read from them. The objective asks here and never looks at a model's kind itself.

- ``hits`` and ``slots``: each hit's slot, the slots matched to the particles (:mod:`hpcvit.hits.matching`);
- ``edges``: a logit per hit and neighbour that both come from one particle. The loss is a class-balanced binary
  cross-entropy (most neighbours share a particle; the few that do not are where clusters part); the clusters
  are grown by average linkage over the edges (:func:`linkage`);
- ``condensation``: the edges as above, and a condensation strength and clustering-space position per hit
  (:mod:`hpcvit.hits.condensation`); both losses are learnt. The clusters are condensed, then joined by
  average linkage over the edges (pieces of one shower that condensed apart).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from hpcvit.hits.condensation import condensation_loss, condense
from hpcvit.hits.matching import LossWeights, hit_loss, owners, predicted_clusters, with_per_hit_loss


@dataclass(frozen=True)
class Head:
    """The loss of a head's outputs against ``target`` (particle, labels, pad) and each hit's cluster (batch x
    hits, -1 at padding) with each event's cluster type probabilities (clusters x types); ``clusters`` takes the
    model's ``threshold`` and its ``cluster_settings`` as keywords."""

    loss: Callable[..., torch.Tensor]
    clusters: Callable[..., tuple[torch.Tensor, list[np.ndarray]]]


def edge_truth(particle: torch.Tensor, labels: torch.Tensor, nbr: torch.Tensor, nbr_pad: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(whether each edge joins two hits of one particle, whether the edge is there at all). A noise hit (no
    particle) shares a particle with nobody."""
    b, n, k = nbr.shape
    owner = owners(particle, labels)
    other = torch.gather(owner, 1, nbr.reshape(b, -1)).view(b, n, k)
    valid = ~nbr_pad & (particle >= 0).unsqueeze(-1)
    return (owner.unsqueeze(-1) == other) & (other >= 0) & valid, valid


def edge_loss(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor], w: LossWeights = LossWeights()
              ) -> torch.Tensor:
    """Class-balanced binary cross-entropy of the edges, plus the per-hit type and kinematics losses."""
    particle, labels = target["particle"], target["labels"]
    same, valid = edge_truth(particle, labels, out["nbr"], out["nbr_pad"])
    logit = out["edge"].float()[valid]
    truth = same[valid].float()
    pos = truth.sum().clamp_min(1.0)
    neg = (1 - truth).sum().clamp_min(1.0)
    weight = torch.where(truth > 0, 0.5 / pos, 0.5 / neg)
    loss = w.assign * (F.binary_cross_entropy_with_logits(logit, truth, reduction="none") * weight).sum()
    return with_per_hit_loss(loss, out, particle, labels, w)


def linkage(prob: np.ndarray, nbr: np.ndarray, missing: np.ndarray, threshold: float,
            start: np.ndarray | None = None) -> np.ndarray:
    """Average-linkage agglomeration over one event's neighbour graph: every hit starts alone (or in its
    ``start`` group); in rounds, two groups join when the mean probability of all the edges between them passes
    ``threshold``, the most likely pairs first and each group once per round, until no pair passes. One wrong
    edge among many right ones does not join two showers, as it would in connected components. A group number
    per hit (0, 1, ...)."""
    n = len(prob)
    src, j = np.nonzero(~missing)
    dst, p = nbr[src, j], prob[src, j].astype(np.float64)
    group = np.arange(n) if start is None else np.unique(start, return_inverse=True)[1].reshape(-1)
    while True:
        a, b = group[src], group[dst]
        between = a != b
        if not between.any():
            break
        pair = np.minimum(a, b)[between].astype(np.int64) * n + np.maximum(a, b)[between]
        pairs, inverse = np.unique(pair, return_inverse=True)
        mean = np.bincount(inverse, weights=p[between]) / np.bincount(inverse)
        passing = np.flatnonzero(mean > threshold)
        if not len(passing):
            break
        joined, into = np.zeros(n, bool), np.arange(n)
        for q in passing[np.argsort(-mean[passing], kind="stable")]:
            x, y = divmod(int(pairs[q]), n)
            if not (joined[x] or joined[y]):
                joined[x] = joined[y] = True
                into[y] = x
        group = into[group]
    return np.unique(group, return_inverse=True)[1].reshape(-1)


def edge_clusters(out: dict[str, torch.Tensor], pad: torch.Tensor, threshold: float = 0.5
                  ) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Each event's hits grouped by :func:`linkage` of the edge probabilities; a cluster's type probabilities
    are its hits' averaged."""
    return _linked(out, pad, threshold, lambda i, n: None)


def cluster_types(labels: np.ndarray, hit_types: np.ndarray) -> np.ndarray:
    """Each cluster's type probabilities: its hits' averaged (clusters x types)."""
    sums = np.zeros((int(labels.max()) + 1 if len(labels) else 0, hit_types.shape[-1]))
    np.add.at(sums, labels, hit_types)
    return (sums / np.maximum(sums.sum(-1, keepdims=True), 1e-9)).astype(np.float32)


def condensation_head_loss(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                           w: LossWeights = LossWeights()) -> torch.Tensor:
    """The edge loss (with the per-hit losses) plus the object-condensation loss."""
    own = owners(target["particle"], target["labels"])
    return edge_loss(out, target, w) + w.assign * condensation_loss(out["beta"], out["ccoords"], own, target["pad"])


def condensed_clusters(out: dict[str, torch.Tensor], pad: torch.Tensor, threshold: float = 0.7,
                       radius: float = 0.4, min_beta: float = 0.1) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Each event's hits condensed (:func:`hpcvit.hits.condensation.condense`) around the hits stronger than
    ``min_beta``, within ``radius`` (the model's ``cluster_settings``); then condensed pieces joined by
    :func:`linkage` of the edges at ``threshold``."""
    beta = torch.sigmoid(out["beta"].detach().float()).cpu().numpy()
    coords = out["ccoords"].detach().float().cpu().numpy()
    return _linked(out, pad, threshold, lambda i, n: condense(beta[i, :n], coords[i, :n], min_beta, radius))


def _linked(out: dict[str, torch.Tensor], pad: torch.Tensor, threshold: float,
            start: Callable[[int, int], np.ndarray | None]) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Each event's hits (its first ``n``, padding after them) grouped by :func:`linkage` of the edges from
    ``start(event, n)``'s groups (None: single hits), with the groups' type probabilities."""
    prob = torch.sigmoid(out["edge"].detach().float()).cpu().numpy()
    nbr, missing, pad_np = out["nbr"].cpu().numpy(), out["nbr_pad"].cpu().numpy(), pad.cpu().numpy()
    hit_types = F.softmax(out["type"].detach().float(), dim=-1).cpu().numpy()
    slot = np.full(pad_np.shape, -1, dtype=np.int64)
    types = []
    for i in range(len(pad_np)):
        n = int((~pad_np[i]).sum())
        labels = linkage(prob[i, :n], nbr[i, :n], missing[i, :n], threshold, start=start(i, n))
        slot[i, :n] = labels
        types.append(cluster_types(labels, hit_types[i, :n]))
    return torch.from_numpy(slot), types


def _slot_clusters(slots: bool) -> Callable[..., tuple[torch.Tensor, list[np.ndarray]]]:
    def clusters(out: dict[str, torch.Tensor], pad: torch.Tensor, threshold: float = 0.5
                 ) -> tuple[torch.Tensor, list[np.ndarray]]:
        slot, types = predicted_clusters(out, pad, slots)
        return slot, list(types.float().cpu().numpy())
    return clusters


HEADS: dict[str, Head] = {
    "hits": Head(lambda out, target: hit_loss(out, target, False), _slot_clusters(False)),
    "slots": Head(lambda out, target: hit_loss(out, target, True), _slot_clusters(True)),
    "edges": Head(edge_loss, edge_clusters),
    "condensation": Head(condensation_head_loss, condensed_clusters),
}
