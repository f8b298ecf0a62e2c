"""Models that assign an event's hits to the particles that made them.

Both take ``(hits, pad)``: the scaled numbers of every hit (batch x hits x features) and the padding mask (True
at padding) and return a dict of logits:

- ``assign`` (batch x hits x slots): which of the model's slots (clusters, queries) each hit belongs to;
- ``type`` (per hit, or per slot with ``per_slot``): the particle type, :data:`TYPES`;
- ``kin``: the particle's log-energy and unit direction (4 numbers).

Slots are unordered: the loss matches them to the truth particles (:mod:`hpcvit.hits.matching`).
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

    per_slot = True

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
