"""Small CNN baseline: cheap enough to train on two CPU cores."""

from __future__ import annotations

from torch import nn


def build_cnn_small(in_chans: int, img_size: int, num_outputs: int = 1, width: int = 32,
                    dropout: float = 0.1, input_pool: int = 1) -> nn.Module:
    """Four 3x3 conv blocks (BN, ReLU, 2x2 max-pool after the first three), global average pool, linear head.

    ``input_pool`` > 1 average-pools the image first (2 turns 125 x 125 jet images into 62 x 62: about 4x
    cheaper on a CPU, at little cost in tagging power).
    """
    layers: list[nn.Module] = [nn.AvgPool2d(input_pool)] if input_pool > 1 else []
    chans = in_chans
    for i, out in enumerate((width, width * 2, width * 4, width * 4)):
        layers += [nn.Conv2d(chans, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        if i < 3:
            layers.append(nn.MaxPool2d(2))
        chans = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(chans, num_outputs))
