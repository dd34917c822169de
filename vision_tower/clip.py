"""OpenAI-CLIP ViT tower on transformers' `CLIPVisionModel` (the LLaVA-1.5 baseline tower).

Hidden-state semantics follow HF/LLaVA: `hidden_states[0]` is the embedding output *after* `pre_layrnorm`,
`hidden_states[i]` the output of encoder layer i; `post_layernorm` only pools CLS and is never applied here.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from .base import VisionTower
from .config import VisionTowerConfig


def hf_clip_vision_config(config: VisionTowerConfig) -> CLIPVisionConfig:
    hf = CLIPVisionConfig(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        attention_dropout=0.0,
    )
    hf._attn_implementation = "sdpa"
    return hf


class ClipVisionTower(VisionTower):
    """CLIP ViT with the LLaVA interface of `VisionTower`; weights live in `self.model` (transformers names)."""

    def __init__(self, config: VisionTowerConfig, *, select_layer: int = -2, select_feature: str = "patch",
                 device=None):
        if config.arch != "clip":
            raise ValueError(f"ClipVisionTower needs arch 'clip', got {config.arch!r}")
        if not config.qkv_bias:
            raise ValueError("CLIP towers always have q/k/v biases (qkv_bias=False is not supported)")
        super().__init__(config, select_layer=select_layer, select_feature=select_feature)
        with torch.device(device if device is not None else "cpu"):
            self.model = CLIPVisionModel(hf_clip_vision_config(config))

    @property
    def _core(self) -> nn.Module:
        # transformers < 5 wrapped the modules in `vision_model`; work with either layout.
        return getattr(self.model, "vision_model", self.model)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._core.pre_layrnorm(self._core.embeddings(pixel_values))

    @property
    def blocks(self) -> nn.ModuleList:
        return self._core.encoder.layers

    def block_inputs(self, x: torch.Tensor) -> tuple:
        return (None,)  # attention_mask: full bidirectional attention

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [*self._core.embeddings.parameters(), *self._core.pre_layrnorm.parameters()]

    def canonical_key_map(self) -> dict[str, str]:
        prefix = "model.vision_model." if self._core is not self.model else "model."
        return {k[len(prefix):]: k for k in self.state_dict() if k.startswith(prefix)}

    def init_non_persistent_buffers(self) -> None:
        emb = self._core.embeddings
        with torch.no_grad():
            emb.position_ids.copy_(torch.arange(emb.num_positions, device=emb.position_ids.device).expand(1, -1))
