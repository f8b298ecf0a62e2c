"""Object condensation (Kieseler, Eur. Phys. J. C 80, 886 (2020)): every hit is placed in a learnt clustering
space and given a condensation strength ``beta``; the hits of one particle gather around the particle's
strongest hit, the others are pushed out of its unit ball. Clusters are read by taking the strong hits that are
``radius`` apart as condensation points and giving every hit to the nearest one within ``radius``. Nothing here
depends on how the particles are numbered: the loss sums over particles, the clusters come from the hits' own
outputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


Q_MIN = 0.1
"""The least charge a hit carries: hits of low ``beta`` still feel the potentials."""
NOISE_WEIGHT = 1.0
"""Weight of the noise hits' mean ``beta`` in the condensation loss (noise should condense nowhere)."""
BETA_MAX = 1.0 - 1e-4
"""Where ``beta`` is clipped: its charge atanh(beta)^2 stays finite (about 24.6)."""


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


def condense(beta: np.ndarray, coords: np.ndarray, min_beta: float, radius: float) -> np.ndarray:
    """One event's clusters (0, 1, ...): the hits whose strength passes ``min_beta`` become condensation points,
    strongest first, unless a stronger one lies within ``radius`` of them in the clustering space; every hit goes
    to its nearest condensation point within ``radius`` (a hit between two showers to the closer one, not to the
    stronger); a hit that none reaches is a cluster of its own."""
    n = len(beta)
    seeds: list[int] = []
    for i in np.argsort(-beta, kind="stable"):
        if beta[i] <= min_beta:
            break
        if not seeds or (((coords[seeds] - coords[i]) ** 2).sum(-1) >= radius * radius).all():
            seeds.append(int(i))
    group = np.full(n, -1, dtype=np.int64)
    if seeds:
        d2 = ((coords[:, None] - coords[seeds][None]) ** 2).sum(-1)
        nearest = d2.argmin(1)
        reached = d2[np.arange(n), nearest] < radius * radius
        group[reached] = nearest[reached]
        group[seeds] = np.arange(len(seeds))  # a point is its own, whatever its distances say (NaN)
    alone = group < 0
    group[alone] = len(seeds) + np.arange(int(alone.sum()))
    return group
