"""`pixel_shuffle{k}_mlp{depth}x_gelu`: each k×k block of patches becomes one LLM token, then LLaVA's MLP.

Space-to-depth ("pixel shuffle", as in Idefics3, SmolVLM, InternVL and nanoVLM): the tower's H×W patch grid
of C-wide features becomes an (H/k)×(W/k) grid of C·k²-wide features, so an image costs k² times fewer LLM
tokens (EVA02-L-14-336: 24×24 = 576 → 12×12 = 144 at k = 2) while every feature value is kept. The MLP is
`mlp{depth}x_gelu` on the wider input: Linear(C·k² → d_llm), then (GELU, Linear(d_llm → d_llm)) × (depth − 1),
with the same parameter names (`layers.0.weight`, `layers.2.weight`, ...).

Channel order: output token (i, j), row-major over the (H/k)×(W/k) grid, holds input patches
(k·i + dy, k·j + dx) at channels (dy·k + dx)·C + c, i.e. the block's patches in row-major order, each with its
C channels. This is nanoVLM's `ModalityProjector.pixel_shuffle` and transformers' `Idefics3Connector.pixel_shuffle`
(tested equal); `torch.nn.PixelUnshuffle` holds the same values channel-major (c·k² + dy·k + dx).
`pixel_shuffle_mlp{depth}x_gelu` is k = 2. Only the patch grid is merged: features with prefix (CLS) tokens
(`select_feature="cls_patch"`) are refused, since a lone C-wide token has no k×k block to join.
"""
from __future__ import annotations

import torch

from .builder import Projector, ProjectorConfig
from .mlp import mlp_gelu

DEFAULT_K = 2


def pixel_shuffle(features: torch.Tensor, grid: tuple[int, int], k: int) -> torch.Tensor:
    """[B, H·W, C] row-major patches → [B, (H/k)·(W/k), C·k²], channel (dy·k + dx)·C + c (see the module doc)."""
    (h, w), (b, n, c) = grid, features.shape
    if n != h * w:
        raise ValueError(f"pixel shuffle: {n} feature tokens do not form the tower's {h}x{w} patch grid")
    if h % k or w % k:
        raise ValueError(f"pixel shuffle: k={k} must divide the tower's {h}x{w} patch grid")
    blocks = features.reshape(b, h // k, k, w // k, k, c).permute(0, 1, 3, 2, 4, 5)
    return blocks.reshape(b, (h // k) * (w // k), k * k * c)


class PixelShuffleMLPProjector(Projector):
    """k×k patch blocks concatenated into one token each, then Linear/GELU/Linear to the LLM's width."""

    def __init__(self, config: ProjectorConfig, depth: int, k: int = DEFAULT_K):
        super().__init__(config, k=k, depth=depth)
        self.k = k
        self.layers = mlp_gelu(config.in_features * k * k, config.out_features, depth)

    @classmethod
    def output_tokens(cls, grid: tuple[int, int], prefix_tokens: int, depth: int, k: int = DEFAULT_K) -> int:
        return prefix_tokens + (grid[0] // k) * (grid[1] // k)

    @classmethod
    def check(cls, grid: tuple[int, int], prefix_tokens: int, depth: int, k: int = DEFAULT_K) -> None:
        if grid[0] % k or grid[1] % k:
            raise ValueError(f"pixel_shuffle{k}: k={k} must divide the tower's {grid[0]}x{grid[1]} patch grid "
                             f"(choose a k that divides {grid[0]}, or another image size)")
        if prefix_tokens:
            raise ValueError(f"pixel_shuffle{k} merges the patch grid only, but the features carry {prefix_tokens} "
                             "prefix (CLS) token(s): use select_feature 'patch'")

    def forward(self, features: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        if grid is None:
            raise ValueError(f"{self.config.projector_type} needs the tower's patch grid: "
                             "forward(features, grid=(H, W))")
        return self.layers(pixel_shuffle(features, tuple(grid), self.k))
