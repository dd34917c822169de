"""`identity`: feature tokens go to the LLM unchanged (tower width must equal the LLM's)."""
from __future__ import annotations

import torch
from torch import nn

from .builder import Projector, ProjectorConfig


class IdentityProjector(Projector):
    def __init__(self, config: ProjectorConfig):
        if config.in_features != config.out_features:
            raise ValueError(f"identity projector needs in_features == out_features, got {config.in_features} and "
                             f"{config.out_features}")
        super().__init__(config)
        self.layers = nn.Sequential(nn.Identity())

    def forward(self, features: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        return self.layers(features)
