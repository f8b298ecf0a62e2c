"""The plain Vision Transformer of the seed notebooks (Dosovitskiy et al.), written out."""

from __future__ import annotations

import torch
from torch import nn


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class SeedViT(nn.Module):
    """Patch embedding, learnt position embedding, cls token, pre-norm transformer blocks, linear head."""

    def __init__(self, in_chans: int, img_size: int, num_outputs: int = 1, patch_size: int = 4, dim: int = 64,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0, dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.pad = (-img_size) % patch_size
        grid = (img_size + self.pad) // patch_size
        self.patch = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(_Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = nn.functional.pad(x, (0, self.pad, 0, self.pad))
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(self.drop(x + self.pos))
        return self.head(self.norm(x[:, 0]))


def build_vit_seed(in_chans: int, img_size: int, num_outputs: int = 1, patch_size: int = 4, dim: int = 64,
                   depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0, dropout: float = 0.1) -> nn.Module:
    """Seed ViT; defaults sized for 32x32 crops (patch 4 -> 64 tokens)."""
    return SeedViT(in_chans, img_size, num_outputs, patch_size, dim, depth, heads, mlp_ratio, dropout)
