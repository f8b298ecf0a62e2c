"""ResNet-15: the CMS end-to-end (E2E) jet-image baseline (arXiv:1807.11916, 1902.08276, 2104.14659).

A 7x7 stem convolution and a 2x2 max-pool, then seven residual blocks of two 3x3 convolutions -- ``nblocks`` at
``fmaps[0]`` channels, one block that doubles to ``fmaps[1]`` with stride 2, ``nblocks`` at ``fmaps[1]`` -- global
max-pool and a linear head: 1 + 7 x 2 = 15 convolutions. As in the E2E reference code: no batch norm (``batch_norm``
adds it), stem padding 1, a strided 1x1 convolution on the shortcut of the widening block, identity elsewhere. The
E2E network also concatenates the jet pT and mass to the pooled features; here the head sees the image only.
"""

from __future__ import annotations

import torch
from torch import nn


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection; stride 2 and a 1x1 shortcut when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, batch_norm: bool = False):
        super().__init__()
        stride = 1 if in_ch == out_ch else 2
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(out_ch) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(out_ch) if batch_norm else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet15(nn.Module):
    def __init__(self, in_chans: int, num_outputs: int = 1, fmaps: tuple[int, int] = (16, 32), nblocks: int = 3,
                 pool: str = "max", batch_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', not {pool!r}")
        c0, c1 = fmaps
        self.stem = nn.Sequential(nn.Conv2d(in_chans, c0, 7, stride=1, padding=1), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(2))
        self.layer1 = nn.Sequential(*(ResBlock(c0, c0, batch_norm) for _ in range(nblocks)))
        self.layer2 = ResBlock(c0, c1, batch_norm)
        self.layer3 = nn.Sequential(*(ResBlock(c1, c1, batch_norm) for _ in range(nblocks)))
        self.pool = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(c1, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.drop(self.pool(x).flatten(1)))


def build_resnet15(in_chans: int, img_size: int, num_outputs: int = 1, width: int = 16, nblocks: int = 3,
                   pool: str = "max", batch_norm: bool = False, dropout: float = 0.0) -> nn.Module:
    """E2E ResNet-15: ``width`` channels in the first stage, ``2 * width`` after; any image size from 16 px."""
    return ResNet15(in_chans, num_outputs, (width, 2 * width), nblocks, pool, batch_norm, dropout)
