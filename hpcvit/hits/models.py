"""Models that assign an event's hits to the particles that made them.

Each takes ``(hits, pad)``: the scaled numbers of every hit (batch x hits x features) and the padding mask (True
at padding) and returns a dict of logits. Its ``head`` says how they read (:mod:`hpcvit.hits.heads` holds the
loss and the clustering of each):

- ``hits``: ``assign`` (batch x hits x slots), the slot each hit belongs to; ``type`` (the particle type,
  :data:`TYPES`) and ``kin`` (the particle's log-energy and unit direction) per hit;
- ``slots``: ``assign`` as above; ``type`` (with a last "no particle" class) and ``kin`` per slot;
- ``edges``: ``edge`` (batch x hits x k), whether a hit and each of its ``nbr`` (k nearest neighbours) come
  from one particle; ``type`` and ``kin`` per hit.

Slots are unordered: the loss matches them to the truth particles (:mod:`hpcvit.hits.matching`). An edge is
scored by whether its two hits share a particle, whatever the particles' numbers.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

TYPES = ("photon", "electron", "muon", "charged_hadron", "neutral_hadron", "noise")
"""Particle types the models tell apart (``noise``: hits made by no particle)."""


class Embedder(nn.Module):
    """The seed's embedder: ``nlayers`` linear layers with an activation between them, ``d_input -> d_model``."""

    def __init__(self, nlayers: int, d_input: int, d_model: int, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict([("input_layer", nn.Linear(d_input, d_model))])
        for i in range(1, nlayers):
            layers[f"hidden_actfun{i}"] = act()
            # the seed wrote Linear(d_input, d_model) here, which cannot follow a d_model-wide layer
            layers[f"hidden_linear{i}"] = nn.Linear(d_model, d_model)
        self.model = nn.Sequential(layers)

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        return self.model(src)


class ClustersFinder(nn.Module):
    """Seed 003's model: two embedders and ``nn.Transformer`` (encoder over the hits, decoder whose queries are the
    hits again), a softmax over at most ``nclusters_max`` clusters per hit; heads for the particle type and
    kinematics of each hit's particle (the seed's second loss). The padding masks are passed to the encoder,
    the decoder and the cross-attention (the seed's ``create_mask``); outputs are logits (the seed applied a
    softmax before a cross-entropy, which applies its own)."""

    head = "hits"

    def __init__(self, n_features: int, n_types: int = len(TYPES), nclusters_max: int = 16, dmodel: int = 64,
                 nhead: int = 4, nhid_ff_trsf: int = 128, nlayers_encoder: int = 2, nlayers_decoder: int = 2,
                 nlayers_embder: int = 2, dropout: float = 0.0):
        super().__init__()
        self.input_embedder = Embedder(nlayers_embder, n_features, dmodel)
        self.tgt_embedder = Embedder(nlayers_embder, n_features, dmodel)
        # nn.Transformer's own encoder, built without the nested-tensor shortcut (a prototype that would make
        # evaluation take another path than training)
        layer = nn.TransformerEncoderLayer(dmodel, nhead, nhid_ff_trsf, dropout, batch_first=True)
        encoder = nn.TransformerEncoder(layer, nlayers_encoder, norm=nn.LayerNorm(dmodel), enable_nested_tensor=False)
        self.transformer = nn.Transformer(d_model=dmodel, nhead=nhead, dim_feedforward=nhid_ff_trsf,
                                          num_encoder_layers=nlayers_encoder, num_decoder_layers=nlayers_decoder,
                                          dropout=dropout, batch_first=True, custom_encoder=encoder)
        self.lastlin = nn.Linear(dmodel, nclusters_max)
        self.type_head = nn.Linear(dmodel, n_types)
        self.kin_head = nn.Linear(dmodel, 4)

    def forward(self, hits: torch.Tensor, pad: torch.Tensor) -> dict[str, torch.Tensor]:
        src, tgt = self.input_embedder(hits), self.tgt_embedder(hits)
        out = self.transformer(src=src, tgt=tgt, src_key_padding_mask=pad, tgt_key_padding_mask=pad,
                               memory_key_padding_mask=pad)
        return {"assign": self.lastlin(out), "type": self.type_head(out), "kin": self.kin_head(out)}


class HitSetTransformer(nn.Module):
    """An encoder over the hits and a set of learnt cluster queries (DETR / MaskFormer): each query attends to the
    encoded hits and becomes one particle candidate with its type (or no particle) and kinematics; a hit belongs
    to the query whose embedding its own matches best (``assign`` = hit . query / sqrt(d))."""

    head = "slots"

    def __init__(self, n_features: int, n_types: int = len(TYPES), n_queries: int = 16, dmodel: int = 96,
                 nhead: int = 4, dim_ff: int = 192, nlayers_encoder: int = 3, nlayers_decoder: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(n_features, dmodel), nn.GELU(), nn.Linear(dmodel, dmodel))
        enc = nn.TransformerEncoderLayer(dmodel, nhead, dim_ff, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(enc, nlayers_encoder, enable_nested_tensor=False)
        self.queries = nn.Embedding(n_queries, dmodel)
        dec = nn.TransformerDecoderLayer(dmodel, nhead, dim_ff, dropout, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(dec, nlayers_decoder)
        self.norm = nn.LayerNorm(dmodel)
        self.hit_proj = nn.Linear(dmodel, dmodel)
        self.query_proj = nn.Sequential(nn.Linear(dmodel, dmodel), nn.GELU(), nn.Linear(dmodel, dmodel))
        self.type_head = nn.Linear(dmodel, n_types + 1)
        self.kin_head = nn.Linear(dmodel, 4)
        self.scale = 1.0 / math.sqrt(dmodel)

    def forward(self, hits: torch.Tensor, pad: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.encoder(self.embed(hits), src_key_padding_mask=pad)
        q = self.queries.weight.unsqueeze(0).expand(hits.shape[0], -1, -1)
        q = self.norm(self.decoder(q, h, memory_key_padding_mask=pad))
        assign = torch.einsum("bhd,bqd->bhq", self.hit_proj(h), self.query_proj(q)) * self.scale
        return {"assign": assign, "type": self.type_head(q), "kin": self.kin_head(q)}


class LocalAttention(nn.Module):
    """Pre-norm attention of each hit over its ``k`` nearest neighbours, keys and values shifted by an encoding
    of where the neighbour lies (``pe``, Point Transformer), then a feed-forward block."""

    def __init__(self, dmodel: int, nhead: int, dim_ff: int):
        super().__init__()
        self.nhead, self.norm1, self.norm2 = nhead, nn.LayerNorm(dmodel), nn.LayerNorm(dmodel)
        self.q, self.kv = nn.Linear(dmodel, dmodel), nn.Linear(dmodel, 2 * dmodel)
        self.out = nn.Linear(dmodel, dmodel)
        self.ff = nn.Sequential(nn.Linear(dmodel, dim_ff), nn.GELU(), nn.Linear(dim_ff, dmodel))

    def forward(self, h: torch.Tensor, nbr: torch.Tensor, pe: torch.Tensor, nbr_pad: torch.Tensor) -> torch.Tensor:
        b, n, k = nbr.shape
        d, heads = h.shape[-1], self.nhead
        x = self.norm1(h)
        kv = gather(self.kv(x), nbr)  # b x n x k x 2d
        key = (kv[..., :d] + pe).view(b, n, k, heads, -1)
        value = (kv[..., d:] + pe).view(b, n, k, heads, -1)
        score = (self.q(x).view(b, n, 1, heads, -1) * key).sum(-1) / math.sqrt(d // heads)  # b x n x k x heads
        w = torch.softmax(score.masked_fill(nbr_pad.unsqueeze(-1), float("-inf")), dim=2)
        w = torch.nan_to_num(w, nan=0.0).unsqueeze(-1)  # a padding hit has no real neighbour
        h = h + self.out((w * value).sum(2).reshape(b, n, d))
        return h + self.ff(self.norm2(h))


def gather(values: torch.Tensor, nbr: torch.Tensor) -> torch.Tensor:
    """``values`` (batch x hits x d) of each hit's neighbours ``nbr`` (batch x hits x k): batch x hits x k x d."""
    b, n, k = nbr.shape
    flat = (nbr + torch.arange(b, device=nbr.device).view(b, 1, 1) * n).reshape(-1)
    return values.reshape(b * n, -1)[flat].view(b, n, k, -1)


def neighbours(coords: torch.Tensor, pad: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each hit's ``k`` nearest other hits (batch x hits x k indices) and which of those are not there (padding,
    or an event with fewer than ``k + 1`` hits)."""
    with torch.no_grad():
        n = coords.shape[1]
        d = torch.cdist(coords.float(), coords.float())
        d = d.masked_fill(pad.unsqueeze(1), float("inf"))
        d = d.masked_fill(torch.eye(n, dtype=torch.bool, device=d.device), float("inf"))
        dist, nbr = torch.topk(d, max(min(k, n - 1), 1), dim=-1, largest=False, sorted=True)
        return nbr, torch.isinf(dist) | pad.unsqueeze(-1)


def relations(hits: torch.Tensor, nbr: torch.Tensor, nbr_pad: torch.Tensor, coords: list[int]
              ) -> torch.Tensor:
    """What the model knows of a hit and each neighbour (batch x hits x k x (len(coords) + 2 + features)): the
    offset and distance in units of the event's own spacing (the median distance from a hit to its nearest
    neighbour, measured per event as the topological baseline measures its neighbourhood), the distance over
    the hit's own nearest one (a gap between showers stands out at any cell size), and the difference of every
    fed number."""
    diff = gather(hits, nbr) - hits.unsqueeze(2)
    offset = diff[..., coords]
    dist = offset.norm(dim=-1)
    nearest = dist[..., 0].masked_fill(nbr_pad[..., 0], float("nan"))
    spacing = torch.nanmedian(nearest, dim=1, keepdim=True).values.nan_to_num(1.0).clamp_min(1e-6)  # batch x 1
    unit = spacing.unsqueeze(-1)
    own = (dist / nearest.nan_to_num(1.0).clamp_min(1e-6).unsqueeze(-1)).clamp_max(100.0)
    rel = torch.cat([offset / unit.unsqueeze(-1), (dist / unit).unsqueeze(-1), own.log1p().unsqueeze(-1), diff], -1)
    return rel.masked_fill(nbr_pad.unsqueeze(-1), 0.0)


class HitGraphTransformer(nn.Module):
    """Attention over each hit's ``k`` nearest neighbours (``nlayers_local``), then over the whole event
    (``nlayers_global``), and an edge head: for a hit and each neighbour, the logit that both come from one
    particle. Clusters are grown from the edges by average linkage: two groups join while the mean probability
    of the edges between them passes ``threshold`` (:func:`hpcvit.hits.heads.linkage`); the learnt successor of
    the topological baseline's fixed neighbourhood. Type and kinematics per hit. Neighbours are found in the fed
    numbers ``coords`` (x, y, z: columns 1-3 when ``data.hits.features`` starts E, x, y, z)."""

    head = "edges"

    def __init__(self, n_features: int, n_types: int = len(TYPES), k: int = 16, dmodel: int = 64, nhead: int = 4,
                 dim_ff: int = 128, nlayers_local: int = 3, nlayers_global: int = 1,
                 coords: list[int] | None = None, threshold: float = 0.7):
        super().__init__()
        coords = [1, 2, 3] if coords is None else list(coords)
        if not coords or max(coords) >= n_features or min(coords) < 0:
            raise ValueError(f"coords {list(coords)}: give columns among the {n_features} fed numbers of a hit")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold {threshold}: an edge probability, between 0 and 1")
        self.k, self.coords, self.threshold = k, coords, float(threshold)
        n_rel = len(coords) + 2 + n_features
        self.embed = nn.Sequential(nn.Linear(n_features, dmodel), nn.GELU(), nn.Linear(dmodel, dmodel))
        self.rel = nn.Sequential(nn.Linear(n_rel, dmodel), nn.GELU(), nn.Linear(dmodel, dmodel))
        self.local = nn.ModuleList(LocalAttention(dmodel, nhead, dim_ff) for _ in range(nlayers_local))
        self.globals = nn.ModuleList(
            nn.TransformerEncoderLayer(dmodel, nhead, dim_ff, 0.0, batch_first=True, norm_first=True)
            for _ in range(nlayers_global))
        self.norm = nn.LayerNorm(dmodel)
        # the edge MLP's first layer on (hit, neighbour, offset), taken apart so each hit's share is computed once
        self.edge_hit, self.edge_nbr = nn.Linear(dmodel, dmodel), nn.Linear(dmodel, dmodel, bias=False)
        self.edge_rel = nn.Linear(dmodel, dmodel, bias=False)
        self.edge_out = nn.Sequential(nn.GELU(), nn.Linear(dmodel, 1))
        self.type_head = nn.Linear(dmodel, n_types)
        self.kin_head = nn.Linear(dmodel, 4)

    def encode(self, hits: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Each hit's encoding, and the edge, type and kinematics outputs."""
        nbr, nbr_pad = neighbours(hits[..., self.coords], pad, self.k)
        pe = self.rel(relations(hits, nbr, nbr_pad, self.coords))
        h = self.embed(hits)
        for layer in self.local:
            h = layer(h, nbr, pe, nbr_pad)
        for layer in self.globals:
            h = layer(h, src_key_padding_mask=pad)
        h = self.norm(h)
        pair = self.edge_hit(h).unsqueeze(2) + gather(self.edge_nbr(h), nbr) + self.edge_rel(pe)
        edge = self.edge_out(pair).squeeze(-1)
        return h, {"edge": edge, "nbr": nbr, "nbr_pad": nbr_pad, "type": self.type_head(h), "kin": self.kin_head(h)}

    def forward(self, hits: torch.Tensor, pad: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.encode(hits, pad)[1]


class HitCondensationTransformer(HitGraphTransformer):
    """The hit graph transformer with object condensation beside its edges (:mod:`hpcvit.hits.condensation`):
    per hit a condensation strength ``beta`` and a position in a ``space``-dimensional clustering space, learnt
    with the edges. Hits stronger than ``min_beta`` and ``radius`` apart there become condensation points; each
    hit goes to the nearest within ``radius``; pieces of one shower that condensed apart are joined when the
    mean probability of the edges between them passes ``threshold``. Where two showers touch, a hit is given to
    the closer condensation point rather than joined by a chain of neighbours."""

    head = "condensation"

    def __init__(self, n_features: int, n_types: int = len(TYPES), k: int = 16, dmodel: int = 64, nhead: int = 4,
                 dim_ff: int = 128, nlayers_local: int = 3, nlayers_global: int = 1,
                 coords: list[int] | None = None, threshold: float = 0.7, radius: float = 0.4,
                 min_beta: float = 0.1, space: int = 3):
        super().__init__(n_features, n_types, k, dmodel, nhead, dim_ff, nlayers_local, nlayers_global, coords,
                         threshold)
        if not 0 < radius <= 1:
            raise ValueError(f"radius {radius}: a distance in the clustering space, in (0, 1]")
        if not 0 <= min_beta < 1:
            raise ValueError(f"min_beta {min_beta}: a condensation strength, in [0, 1)")
        self.radius, self.min_beta = float(radius), float(min_beta)
        self.beta_head = nn.Linear(dmodel, 1)
        self.space_head = nn.Sequential(nn.Linear(dmodel, dmodel), nn.GELU(), nn.Linear(dmodel, space))

    def forward(self, hits: torch.Tensor, pad: torch.Tensor) -> dict[str, torch.Tensor]:
        h, out = self.encode(hits, pad)
        out.update(beta=self.beta_head(h).squeeze(-1), ccoords=self.space_head(h))
        return out

    @property
    def cluster_settings(self) -> dict[str, float]:
        """How the clusters are read, beside ``threshold`` (:func:`hpcvit.hits.heads.condensed_clusters`)."""
        return {"radius": self.radius, "min_beta": self.min_beta}


def build_clusters_finder(n_features: int, n_types: int = len(TYPES), nclusters_max: int = 16, dmodel: int = 64,
                          nhead: int = 4, nhid_ff_trsf: int = 128, nlayers_encoder: int = 2, nlayers_decoder: int = 2,
                          nlayers_embder: int = 2, dropout: float = 0.0) -> nn.Module:
    return ClustersFinder(n_features, n_types, nclusters_max, dmodel, nhead, nhid_ff_trsf, nlayers_encoder,
                          nlayers_decoder, nlayers_embder, dropout)


def build_hit_set_transformer(n_features: int, n_types: int = len(TYPES), n_queries: int = 16, dmodel: int = 96,
                              nhead: int = 4, dim_ff: int = 192, nlayers_encoder: int = 3, nlayers_decoder: int = 3,
                              dropout: float = 0.0) -> nn.Module:
    return HitSetTransformer(n_features, n_types, n_queries, dmodel, nhead, dim_ff, nlayers_encoder,
                             nlayers_decoder, dropout)


def build_hit_graph_transformer(n_features: int, n_types: int = len(TYPES), k: int = 16, dmodel: int = 64,
                                nhead: int = 4, dim_ff: int = 128, nlayers_local: int = 3, nlayers_global: int = 1,
                                coords: list[int] | None = None, threshold: float = 0.7) -> nn.Module:
    return HitGraphTransformer(n_features, n_types, k, dmodel, nhead, dim_ff, nlayers_local, nlayers_global,
                               coords, threshold)


def build_hit_condensation_transformer(n_features: int, n_types: int = len(TYPES), k: int = 16, dmodel: int = 64,
                                       nhead: int = 4, dim_ff: int = 128, nlayers_local: int = 3,
                                       nlayers_global: int = 1, coords: list[int] | None = None,
                                       threshold: float = 0.7, radius: float = 0.4, min_beta: float = 0.1,
                                       space: int = 3) -> nn.Module:
    return HitCondensationTransformer(n_features, n_types, k, dmodel, nhead, dim_ff, nlayers_local, nlayers_global,
                                      coords, threshold, radius, min_beta, space)
