"""DeepViT (Zhou et al. 2021, arXiv:2103.11886): a ViT whose attention maps are re-mixed across heads.

Re-attention replaces ``softmax(q k^T / sqrt(d)) v`` by ``Norm(Theta^T softmax(q k^T / sqrt(d))) v``: a learnable
``heads x heads`` matrix ``Theta`` mixes the per-head attention maps after the softmax, and a LayerNorm over the head
axis follows. Mixing the maps keeps deeper layers from collapsing onto the same attention pattern ("attention
collapse"). The layout (patch embedding with LayerNorms on both sides of the linear projection, pre-norm blocks,
cls pooling, LayerNorm + linear head) follows the mass-regression seed (004), which used the same design at
dim 1024 / patch 25; the defaults here are sized for two CPU cores.
"""

from __future__ import annotations

import torch
from torch import nn


class ReAttention(nn.Module):
    """Multi-head self-attention with DeepViT's re-attention (head mixing after the softmax)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.dropout = nn.Dropout(dropout)
        # Theta: mixes attention maps across heads, one row per source head.
        self.reattn_weights = nn.Parameter(torch.randn(heads, heads))
        self.reattn_norm = nn.LayerNorm(heads)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)  # b h n n
        attn = self.dropout(attn)
        attn = torch.einsum("bhij,hg->bgij", attn, self.reattn_weights)  # re-attention: mix heads
        attn = self.reattn_norm(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # LayerNorm over the head axis
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DeepViT(nn.Module):
    """Patch embedding, cls token, learnt positions, ``depth`` re-attention blocks, LayerNorm + linear head."""

    def __init__(self, in_chans: int, img_size: int, num_outputs: int = 1, patch_size: int = 4, dim: int = 64,
                 depth: int = 6, heads: int = 8, dim_head: int = 16, mlp_dim: int = 128, dropout: float = 0.1,
                 emb_dropout: float = 0.1, pool: str = "cls"):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', not {pool!r}")
        self.patch_size = patch_size
        self.pad = (-img_size) % patch_size
        grid = (img_size + self.pad) // patch_size
        patch_dim = in_chans * patch_size * patch_size
        self.to_patch_embedding = nn.Sequential(nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.02)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.dropout = nn.Dropout(emb_dropout)
        self.layers = nn.ModuleList(
            nn.ModuleList([ReAttention(dim, heads, dim_head, dropout), FeedForward(dim, mlp_dim, dropout)])
            for _ in range(depth))
        self.pool = pool
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_outputs))

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """``b c (h p1) (w p2) -> b (h w) (p1 p2 c)``, as the seed's einops ``Rearrange``."""
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = nn.functional.pad(x, (0, self.pad, 0, self.pad))
        x = self.to_patch_embedding(self._patches(x))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.dropout(x + self.pos_embedding)
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        x = x[:, 0] if self.pool == "cls" else x[:, 1:].mean(dim=1)
        return self.mlp_head(x)


def build_deepvit(in_chans: int, img_size: int, num_outputs: int = 1, patch_size: int | None = None, dim: int = 64,
                  depth: int = 6, heads: int = 8, dim_head: int = 16, mlp_dim: int = 128, dropout: float = 0.1,
                  emb_dropout: float = 0.1, pool: str = "cls") -> nn.Module:
    """DeepViT; patch 4 for images up to 64 px (64 tokens at 32 px), else 8 (125 px padded to 128: 256 tokens).

    Images whose side is not a multiple of the patch are zero-padded on the bottom/right. ``patch_size=5`` tiles
    125 px without padding but makes 625 tokens: about ten times the attention cost of patch 8 on CPU.
    """
    patch = patch_size or (4 if img_size <= 64 else 8)
    return DeepViT(in_chans, img_size, num_outputs, patch, dim, depth, heads, dim_head, mlp_dim, dropout,
                   emb_dropout, pool)
