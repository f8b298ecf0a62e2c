"""What a hit model's outputs mean, by its ``head`` (:mod:`hpcvit.hits.models`): the loss against the truth and
the clusters read from them. The objective asks here and never looks at a model's kind itself.

- ``hits`` and ``slots``: each hit's slot, the slots matched to the particles (:mod:`hpcvit.hits.matching`);
- ``edges``: a logit per hit and neighbour that both come from one particle. The loss is a class-balanced binary
  cross-entropy (most neighbours share a particle; the few that do not are where clusters part); the clusters
  are the connected groups of edges above the model's threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from hpcvit.hits.matching import NOISE, LossWeights, hit_loss, particle_type, predicted_clusters, with_per_hit_loss


@dataclass(frozen=True)
class Head:
    """The loss of a head's outputs against ``target`` (particle, labels, pad) and each hit's cluster (batch x
    hits, -1 at padding) with each event's cluster type probabilities (clusters x types)."""

    loss: Callable[..., torch.Tensor]
    clusters: Callable[..., tuple[torch.Tensor, list[np.ndarray]]]


def edge_truth(particle: torch.Tensor, labels: torch.Tensor, nbr: torch.Tensor, nbr_pad: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(whether each edge joins two hits of one particle, whether the edge is there at all). A noise hit (no
    particle) shares a particle with nobody."""
    b, n, k = nbr.shape
    types = particle_type(labels[..., 1], labels[..., 0])
    owner = torch.where((particle >= 0) & (types != NOISE), particle, -1)
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


def edge_clusters(out: dict[str, torch.Tensor], pad: torch.Tensor, threshold: float = 0.5
                  ) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Connected groups of the edges whose probability passes ``threshold``; a cluster's type probabilities are
    its hits' averaged."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    link = (torch.sigmoid(out["edge"].float()) > threshold) & ~out["nbr_pad"] & ~pad.unsqueeze(-1)
    link, nbr, pad_np = link.cpu().numpy(), out["nbr"].cpu().numpy(), pad.cpu().numpy()
    hit_types = F.softmax(out["type"].float(), dim=-1).cpu().numpy()
    slot = np.full(pad_np.shape, -1, dtype=np.int64)
    types = []
    for i in range(len(pad_np)):
        n = int((~pad_np[i]).sum())  # an event's hits come first, its padding after them
        src, j = np.nonzero(link[i, :n])
        dst = nbr[i, :n][src, j]
        graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
        count, labels = connected_components(graph, directed=False)
        slot[i, :n] = labels
        sums = np.zeros((count, hit_types.shape[-1]))
        np.add.at(sums, labels, hit_types[i, :n])
        types.append((sums / np.maximum(sums.sum(-1, keepdims=True), 1e-9)).astype(np.float32))
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
}
