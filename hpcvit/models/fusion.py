"""Images and per-jet scalars into one prediction (seed 002: the jet image beside pT and m0).

Any registered model becomes the image branch: it is built with ``width`` outputs instead of one, and those
features are concatenated with the standardised scalars before a small head.
"""

from __future__ import annotations

import torch
from torch import nn

FUSION_WIDTH = 64
"""Features the image branch hands to the head."""


class ScalarFusion(nn.Module):
    def __init__(self, image_model: nn.Module, n_scalars: int, num_outputs: int = 1, width: int = FUSION_WIDTH):
        super().__init__()
        self.image_model = image_model
        self.head = nn.Sequential(nn.Linear(width + n_scalars, width), nn.ReLU(), nn.Linear(width, num_outputs))

    def forward(self, image: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.image_model(image))
        return self.head(torch.cat([features, scalars.to(features.dtype)], dim=1))
