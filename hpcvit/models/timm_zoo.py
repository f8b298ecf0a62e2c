"""timm models configured for small, non-RGB detector images (no pretrained weights are downloaded)."""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn


class PadTo(nn.Module):
    """Zero-pad images on the bottom/right to a multiple of ``multiple`` before ``inner``."""

    def __init__(self, inner: nn.Module, img_size: int, multiple: int):
        super().__init__()
        self.inner = inner
        self.pad = (-img_size) % multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = nn.functional.pad(x, (0, self.pad, 0, self.pad))
        return self.inner(x)


def _create(arch: str, in_chans: int, img_size: int | None, num_outputs: int, **kwargs: Any) -> nn.Module:
    if img_size is not None:
        kwargs["img_size"] = img_size
    return timm.create_model(arch, pretrained=False, num_classes=num_outputs, in_chans=in_chans, **kwargs)


def _vit(arch: str, in_chans: int, img_size: int, num_outputs: int, patch_size: int | None,
         drop_rate: float) -> nn.Module:
    patch = patch_size or (4 if img_size <= 64 else 16)
    padded = img_size + (-img_size) % patch
    return PadTo(_create(arch, in_chans, padded, num_outputs, patch_size=patch, drop_rate=drop_rate),
                 img_size, patch)


def build_vit_tiny(in_chans: int, img_size: int, num_outputs: int = 1, patch_size: int | None = None,
                   drop_rate: float = 0.0) -> nn.Module:
    return _vit("vit_tiny_patch16_224", in_chans, img_size, num_outputs, patch_size, drop_rate)


def build_vit_small(in_chans: int, img_size: int, num_outputs: int = 1, patch_size: int | None = None,
                    drop_rate: float = 0.0) -> nn.Module:
    return _vit("vit_small_patch16_224", in_chans, img_size, num_outputs, patch_size, drop_rate)


def build_swin_tiny(in_chans: int, img_size: int, num_outputs: int = 1, window_size: int | None = None,
                    drop_rate: float = 0.0) -> nn.Module:
    # Patch 4 and 3 halvings: the last stage is img/32; pad to a multiple of 32 so every stage tiles.
    # timm shrinks the window of any stage smaller than it to the stage's size (full attention there).
    padded = img_size + (-img_size) % 32
    # 32 px: window 8 = full attention on the 8x8 first stage; 224 px: the usual 7; else 4 (tiles 128 px).
    window = window_size or (8 if padded <= 32 else 7 if (padded // 32) % 7 == 0 else 4)
    return PadTo(_create("swin_tiny_patch4_window7_224", in_chans, padded, num_outputs,
                         window_size=window, drop_rate=drop_rate), img_size, 32)


def _padded32(arch: str, in_chans: int, img_size: int, num_outputs: int, drop_rate: float) -> nn.Module:
    padded = img_size + (-img_size) % 32
    return PadTo(_create(arch, in_chans, padded, num_outputs, drop_rate=drop_rate), img_size, 32)


def build_coatnet_0(in_chans: int, img_size: int, num_outputs: int = 1, drop_rate: float = 0.0) -> nn.Module:
    return _padded32("coatnet_0_rw_224", in_chans, img_size, num_outputs, drop_rate)


def build_maxvit_tiny(in_chans: int, img_size: int, num_outputs: int = 1, drop_rate: float = 0.0) -> nn.Module:
    return _padded32("maxvit_tiny_rw_224", in_chans, img_size, num_outputs, drop_rate)


def build_davit_tiny(in_chans: int, img_size: int, num_outputs: int = 1, drop_rate: float = 0.0) -> nn.Module:
    return _create("davit_tiny", in_chans, None, num_outputs, drop_rate=drop_rate)


def _cnn(arch: str, in_chans: int, num_outputs: int, drop_rate: float) -> nn.Module:
    return _create(arch, in_chans, None, num_outputs, drop_rate=drop_rate)


def build_efficientnet_b0(in_chans: int, img_size: int, num_outputs: int = 1, drop_rate: float = 0.2) -> nn.Module:
    return _cnn("efficientnet_b0", in_chans, num_outputs, drop_rate)


def build_efficientnet_b1(in_chans: int, img_size: int, num_outputs: int = 1, drop_rate: float = 0.2) -> nn.Module:
    return _cnn("efficientnet_b1", in_chans, num_outputs, drop_rate)


def build_efficientnet_b2(in_chans: int, img_size: int, num_outputs: int = 1, drop_rate: float = 0.3) -> nn.Module:
    return _cnn("efficientnet_b2", in_chans, num_outputs, drop_rate)


def build_efficientnet_b3(in_chans: int, img_size: int, num_outputs: int = 1, drop_rate: float = 0.3) -> nn.Module:
    return _cnn("efficientnet_b3", in_chans, num_outputs, drop_rate)


def build_resnet18(in_chans: int, img_size: int, num_outputs: int = 1, drop_rate: float = 0.0) -> nn.Module:
    return _cnn("resnet18", in_chans, num_outputs, drop_rate)
