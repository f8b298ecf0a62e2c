"""Object condensation (Kieseler, Eur. Phys. J. C 80, 886 (2020)): every hit is placed in a learnt clustering
space and given a condensation strength ``beta``; the hits of one particle gather around the particle's
strongest hit, the others are pushed out of its unit ball. Clusters are read by taking the strongest hit left as
a condensation point and giving it every unassigned hit within ``radius`` of it, until no hit left passes
``threshold``. Nothing here depends on how the particles are numbered: the loss sums over particles, the
clusters come from the hits' own outputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from hpcvit.hits.matching import NOISE, particle_type

Q_MIN = 0.1
"""The least charge a hit carries: hits of low ``beta`` still feel the potentials."""
NOISE_WEIGHT = 1.0
"""Weight of the noise hits' mean ``beta`` in the condensation loss (noise should condense nowhere)."""
BETA_MAX = 1.0 - 1e-4


def owners(particle: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each hit's particle, -1 for padding and for noise hits (made by no particle)."""
    types = particle_type(labels[..., 1], labels[..., 0])
    return torch.where((particle >= 0) & (types != NOISE), particle, -1)


def condensation_loss(beta_logit: torch.Tensor, coords: torch.Tensor, owner: torch.Tensor, pad: torch.Tensor
                      ) -> torch.Tensor:
    """The potential loss (attraction of a particle's hits to its condensation point, repulsion of every other
    hit within unit distance of it, each weighted by both charges) plus the condensation loss (each particle's
    strongest hit towards ``beta`` 1, noise hits towards 0), averaged over the events."""
    beta = torch.sigmoid(beta_logit.float()).clamp(0.0, BETA_MAX)
    coords = coords.float()
    valid = ~pad
    q = torch.atanh(beta) ** 2 + Q_MIN
    n_p = int(owner.max().item()) + 1 if owner.numel() else 0
    if n_p == 0:
        return beta.sum() * 0.0 + coords.sum() * 0.0
    member = F.one_hot(owner.clamp_min(0), n_p).to(beta.dtype) * (owner >= 0).unsqueeze(-1)  # b x n x P
    exists = member.sum(1) > 0  # b x P
    alpha = (beta.unsqueeze(-1) * member - (1 - member)).argmax(dim=1)  # b x P: each particle's strongest hit
    q_alpha = torch.gather(q, 1, alpha) * exists  # b x P
    x_alpha = torch.gather(coords, 1, alpha.unsqueeze(-1).expand(-1, -1, coords.shape[-1]))  # b x P x D
    d2 = ((coords.unsqueeze(2) - x_alpha.unsqueeze(1)) ** 2).sum(-1)  # b x n x P
    attract = member * d2
    repel = (1 - member) * F.relu(1 - torch.sqrt(d2 + 1e-6))
    potential = ((attract + repel) * q_alpha.unsqueeze(1)).sum(-1) * q * valid  # b x n
    n_valid = valid.sum(1).clamp_min(1)
    l_v = potential.sum(1) / n_valid
    beta_alpha = torch.gather(beta, 1, alpha)
    l_beta = ((1 - beta_alpha) * exists).sum(1) / exists.sum(1).clamp_min(1)
    noise = valid & (owner < 0)
    l_noise = (beta * noise).sum(1) / noise.sum(1).clamp_min(1)
    return (l_v + l_beta + NOISE_WEIGHT * l_noise).mean()


def condense(beta: np.ndarray, coords: np.ndarray, threshold: float, radius: float) -> np.ndarray:
    """One event's clusters (0, 1, ...): the strongest hit left above ``threshold`` takes every unassigned hit
    within ``radius`` of it in the clustering space, then the next; a hit that no condensation point reaches is
    a cluster of its own."""
    n = len(beta)
    group = np.full(n, -1, dtype=np.int64)
    c = 0
    for i in np.argsort(-beta, kind="stable"):
        if beta[i] <= threshold:
            break
        if group[i] >= 0:
            continue
        free = group < 0
        near = free & (((coords - coords[i]) ** 2).sum(-1) < radius * radius)
        group[near | (np.arange(n) == i)] = c
        c += 1
    alone = group < 0
    group[alone] = c + np.arange(int(alone.sum()))
    return group
