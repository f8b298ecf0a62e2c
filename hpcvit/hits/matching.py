"""Losses that do not depend on the order of the truth particles: each event's particles are matched to the
model's slots (Hungarian algorithm on the hits' log-likelihood, DETR-style), and the losses are taken against the
matched slots.

The cost of giving particle ``j`` slot ``k`` is the mean over ``j``'s hits of ``-log p(hit in k)`` (plus, for
models with per-slot types, ``-log p_k(type of j)``); numbering the particles otherwise permutes the rows of the
cost and leaves the matching, and so the loss, as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from hpcvit.hits.models import TYPES

NOISE = TYPES.index("noise")
_CHARGED_HADRONS = {211, 321, 2212}
_NEUTRAL_HADRONS = {130, 310, 2112, 3122}


def particle_type(abs_pdg: torch.Tensor, charge: torch.Tensor) -> torch.Tensor:
    """:data:`TYPES` index of each particle from its |PDG id| and charge (0 is noise; an unlisted hadron goes by
    its charge)."""
    t = torch.where(charge != 0, TYPES.index("charged_hadron"), TYPES.index("neutral_hadron"))
    for pdg, name in ((22, "photon"), (11, "electron"), (13, "muon")):
        t = torch.where(abs_pdg == pdg, TYPES.index(name), t)
    return torch.where(abs_pdg == 0, NOISE, t).long()


def owners(particle: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each hit's particle, -1 for padding and for noise hits (made by no particle)."""
    types = particle_type(labels[..., 1], labels[..., 0])
    return torch.where((particle >= 0) & (types != NOISE), particle, -1)


def kinematics(labels: torch.Tensor) -> torch.Tensor:
    """(log energy, direction x, y, z) of each hit's particle from its label row."""
    return torch.cat([torch.log(labels[..., 2:3].clamp_min(1e-3)), labels[..., 3:6]], dim=-1)


@dataclass(frozen=True)
class LossWeights:
    """The weights of the three losses (the seed weighed its two by hyper-parameters)."""

    assign: float = 1.0
    type: float = 0.5
    kin: float = 0.5
    no_object: float = 0.1
    """Weight of a slot matched to no particle in a per-slot type loss (it should say "no particle")."""


def match_slots(assign: torch.Tensor, particle: torch.Tensor, type_logp: torch.Tensor | None = None,
                types: torch.Tensor | None = None) -> torch.Tensor:
    """The slot of every hit's particle after matching (batch x hits; -1 at padding and for particles left
    without a slot when an event has more particles than slots)."""
    logp = F.log_softmax(assign.float(), dim=-1).detach()
    b, h, k = logp.shape
    n_p = int(particle.max().item()) + 1 if particle.numel() else 0
    if n_p == 0:
        return torch.full_like(particle, -1)
    onehot = F.one_hot(particle.clamp_min(0), n_p).to(logp.dtype) * (particle >= 0).unsqueeze(-1)
    counts = onehot.sum(dim=1)  # b x particles
    cost = -torch.einsum("bhp,bhk->bpk", onehot, logp) / counts.clamp_min(1).unsqueeze(-1)
    if type_logp is not None and types is not None:
        # per-slot type: -log p_k(type of particle j)
        ptype = per_particle(types.clamp_min(0).unsqueeze(-1), particle, n_p).squeeze(-1)
        cost = cost - torch.gather(type_logp.detach().float().unsqueeze(1).expand(b, n_p, k, -1), 3,
                                   ptype[:, :, None, None].expand(b, n_p, k, 1)).squeeze(-1)
    from scipy.optimize import linear_sum_assignment

    cost_np, present = cost.cpu().numpy(), (counts > 0).cpu().numpy()
    slot_of = np.full((b, n_p), -1, dtype=np.int64)
    for i in range(b):
        rows = np.flatnonzero(present[i])
        r, c = linear_sum_assignment(cost_np[i][rows])
        slot_of[i, rows[r]] = c
    table = torch.from_numpy(slot_of).to(particle.device)
    return torch.where(particle >= 0, torch.gather(table, 1, particle.clamp_min(0)), -1)


def per_particle(values: torch.Tensor, particle: torch.Tensor, n_p: int) -> torch.Tensor:
    """One row of ``values`` (batch x hits x d) for each particle (batch x particles x d): its first hit's."""
    b, h = particle.shape
    out = torch.zeros(b, n_p, values.shape[-1], dtype=values.dtype, device=values.device)
    idx = torch.where(particle >= 0, particle, n_p)  # padding goes to a spare row
    spare = torch.zeros(b, n_p + 1, values.shape[-1], dtype=values.dtype, device=values.device)
    spare.scatter_(1, idx.unsqueeze(-1).expand(-1, -1, values.shape[-1]), values)
    out.copy_(spare[:, :n_p])
    return out


def hit_loss(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor], per_slot: bool,
             w: LossWeights = LossWeights()) -> torch.Tensor:
    """The weighted sum of the assignment cross-entropy (hits against their particle's matched slot), the type
    cross-entropy and the kinematics MSE (per hit, or per matched slot for per-slot models)."""
    particle, labels = target["particle"], target["labels"]
    types = particle_type(labels[..., 1], labels[..., 0])
    types = torch.where(particle >= 0, types, -1)
    assign = out["assign"].float()
    type_logp = F.log_softmax(out["type"].float(), dim=-1) if per_slot else None
    slots = match_slots(assign, particle, type_logp, types if per_slot else None)
    loss = w.assign * F.cross_entropy(assign.reshape(-1, assign.shape[-1]), slots.reshape(-1), ignore_index=-1)
    if not per_slot:
        return with_per_hit_loss(loss, out, particle, labels, w)
    kin_target = kinematics(labels)
    # per-slot heads: the matched slots learn their particle's type and kinematics, the others "no particle"
    b, k = out["type"].shape[:2]
    n_p = int(particle.max().item()) + 1 if particle.numel() else 0
    slot_type = torch.full((b, k), len(TYPES), dtype=torch.long, device=particle.device)
    slot_kin = torch.zeros(b, k, 4, device=particle.device)
    has_kin = torch.zeros(b, k, dtype=torch.bool, device=particle.device)
    if n_p:
        p_type = per_particle(types.unsqueeze(-1), particle, n_p).squeeze(-1)
        p_kin = per_particle(kin_target, particle, n_p)
        p_slot = per_particle(slots.unsqueeze(-1), particle, n_p).squeeze(-1)
        p_real = per_particle((particle >= 0).long().unsqueeze(-1), particle, n_p).squeeze(-1).bool() & (p_slot >= 0)
        bi, pj = torch.nonzero(p_real, as_tuple=True)
        slot_type[bi, p_slot[bi, pj]] = p_type[bi, pj]
        slot_kin[bi, p_slot[bi, pj]] = p_kin[bi, pj]
        has_kin[bi, p_slot[bi, pj]] = p_type[bi, pj] != NOISE
    weight = torch.ones(len(TYPES) + 1, device=particle.device)
    weight[-1] = w.no_object
    loss = loss + w.type * F.cross_entropy(out["type"].float().reshape(-1, len(TYPES) + 1), slot_type.reshape(-1),
                                           weight=weight)
    if has_kin.any():
        loss = loss + w.kin * F.mse_loss(out["kin"].float()[has_kin], slot_kin[has_kin])
    return loss


def with_per_hit_loss(loss: torch.Tensor, out: dict[str, torch.Tensor], particle: torch.Tensor,
                      labels: torch.Tensor, w: LossWeights = LossWeights()) -> torch.Tensor:
    """``loss`` plus the type cross-entropy and kinematics MSE of per-hit heads (each hit says its particle's
    type and kinematics; noise hits say noise and have no kinematics)."""
    types = torch.where(particle >= 0, particle_type(labels[..., 1], labels[..., 0]), -1)
    loss = loss + w.type * F.cross_entropy(out["type"].float().reshape(-1, out["type"].shape[-1]), types.reshape(-1),
                                    ignore_index=-1)
    real = (particle >= 0) & (types != NOISE)
    if real.any():
        loss = loss + w.kin * F.mse_loss(out["kin"].float()[real], kinematics(labels)[real])
    return loss


def predicted_clusters(out: dict[str, torch.Tensor], pad: torch.Tensor, per_slot: bool
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(each hit's predicted slot, batch x hits, -1 at padding; each slot's type probabilities, batch x slots x
    types). A per-slot model's hits go to the slot most likely to hold them and be a particle; a per-hit model's
    slot types are the hits' type probabilities averaged over the slot's hits."""
    logp = F.log_softmax(out["assign"].float(), dim=-1)
    if per_slot:
        probs = F.softmax(out["type"].float(), dim=-1)
        exists = (1 - probs[..., -1]).clamp_min(1e-6)
        slot = (logp + torch.log(exists).unsqueeze(1)).argmax(dim=-1)
        slot_types = probs[..., :-1] / probs[..., :-1].sum(-1, keepdim=True).clamp_min(1e-9)
    else:
        slot = logp.argmax(dim=-1)
        hit_types = F.softmax(out["type"].float(), dim=-1) * (~pad).unsqueeze(-1)
        onehot = F.one_hot(slot, out["assign"].shape[-1]).float() * (~pad).unsqueeze(-1)
        sums = torch.einsum("bhk,bht->bkt", onehot, hit_types)
        slot_types = sums / sums.sum(-1, keepdim=True).clamp_min(1e-9)
    return torch.where(pad, -1, slot), slot_types
