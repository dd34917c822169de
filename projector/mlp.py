"""LLaVA's projectors: `linear` and `mlp{N}x_gelu` (one output token per input token).

`mlp{N}x_gelu` follows LLaVA's `multimodal_projector/builder.py`: Linear(d_vision→d_llm), then
(GELU, Linear(d_llm→d_llm)) × (N−1); `linear` is the N = 1 case. Parameter names (`layers.0.weight`,
`layers.2.weight`, …) keep LLaVA's `mm_projector.{0,2}` indices, so LLaVA's `mm_projector.bin` maps by
stripping a prefix.
"""
from __future__ import annotations

import torch
from torch import nn

from .builder import Projector, ProjectorConfig


def mlp_gelu(d_in: int, d_out: int, depth: int) -> nn.Sequential:
    """LLaVA's `mlp{depth}x_gelu` stack: Linear(d_in→d_out), then (GELU, Linear(d_out→d_out)) × (depth − 1)."""
    modules: list[nn.Module] = [nn.Linear(d_in, d_out)]
    for _ in range(depth - 1):
        modules += [nn.GELU(), nn.Linear(d_out, d_out)]
    return nn.Sequential(*modules)


class MLPProjector(Projector):
    """Linear, then (GELU, Linear) × (depth − 1), applied to every feature token."""

    def __init__(self, config: ProjectorConfig, depth: int):
        super().__init__(config, depth=depth)
        self.layers = mlp_gelu(config.in_features, config.out_features, depth)

    def forward(self, features: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        return self.layers(features)


class LinearProjector(MLPProjector):
    """One Linear layer (LLaVA-1's projector)."""

    def __init__(self, config: ProjectorConfig):
        super().__init__(config, depth=1)
