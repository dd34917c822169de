"""SigLIP ViT tower without a CLS token (LLM2CLIP's SigLIP2 So400m), built on timm's `VisionTransformer`.

LLM2CLIP's `Llama3.1-8B-Siglip2-So-L-14-224` config wraps timm `vit_so400m_patch14_siglip_224` (`.v2_webli`)
in EVA-CLIP's `TimmModel`: width 1152, 27 blocks, 16 heads, MLP 4304 (timm's mlp_ratio 3.7362), patch 14 at
224 px (a 16x16 grid), fused q/k/v with bias, LayerNorm eps 1e-6, exact GELU (timm's default, which LLM2CLIP
trained with), a learned position embedding and no CLS token; its MAP pooling head (`attn_pool`) only makes
the CLIP embedding, so LLaVA-style features (`select_layer` of the patch tokens) never use it and it is not
built. Canonical checkpoint names are timm's; the checkpoint's `visual.trunk.` (EVA-CLIP) or `trunk.` prefix
is found by the layout detection. Image statistics: LLM2CLIP's training code normalises this tower with the
OpenAI CLIP mean/std (no `--image-mean`, no pretrained cfg for this model name); the SigLIP2 trunk itself was
pretrained with mean = std = 0.5, so a checkpoint trained otherwise needs a config with its own statistics.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import LayerNorm
from timm.models.vision_transformer import VisionTransformer

from .base import VisionTower
from .checkpoint import Canonical, CheckpointLayout, vit_structure
from .config import EVA_CLIP_CONFIG_SOURCE, VisionTowerConfig


def _from_timm_vit(sd: dict, out: Canonical) -> None:
    for key, value in sd.items():
        if key.startswith(("attn_pool.", "head.", "fc_norm.")):
            out.ignored.append(key)  # the pooled CLIP embedding's head: not part of the patch features
        else:
            out.tensors[key] = value


class SiglipVisionTower(VisionTower):
    """SigLIP ViT with the LLaVA interface of `VisionTower`; weights live in `self.trunk` (timm names)."""

    arch = "siglip"
    num_prefix_tokens = 0  # no CLS token: every hidden state is the 16x16 patch grid
    presets = (
        VisionTowerConfig(
            arch="siglip", name="llm2clip-siglip2-so400m-14-224", image_size=224, patch_size=14, hidden_size=1152,
            num_layers=27, num_heads=16, intermediate_size=4304, layer_norm_eps=1e-6, qkv_bias=True, rope=False,
            hidden_act="gelu", source=EVA_CLIP_CONFIG_SOURCE.format("Llama3.1-8B-Siglip2-So-L-14-224")
            + " (timm vit_so400m_patch14_siglip_224)",
        ),
    )
    layouts = (
        CheckpointLayout("timm_vit", "patch_embed.proj.weight", ("blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight"),
                         _from_timm_vit, forbids=("cls_token", "reg_token")),
    )

    def __init__(self, config: VisionTowerConfig, *, select_layer: int = -2, select_feature: str = "patch",
                 device=None):
        super().__init__(config, select_layer=select_layer, select_feature=select_feature)
        c = config
        self.trunk = VisionTransformer(
            img_size=c.image_size, patch_size=c.patch_size, embed_dim=c.hidden_size, depth=c.num_layers,
            num_heads=c.num_heads, mlp_ratio=(c.intermediate_size + 0.5) / c.hidden_size,  # timm: int(dim * ratio)
            qkv_bias=c.qkv_bias, class_token=False, global_pool="", num_classes=0, act_layer=c.hidden_act,
            norm_layer=partial(LayerNorm, eps=c.layer_norm_eps), init_values=c.layer_scale_init or None,
            drop_path_rate=c.drop_path_rate, device=device,
        )
        for block in self.trunk.blocks:
            block.attn.fused_attn = True  # F.scaled_dot_product_attention, whatever TIMM_FUSED_ATTN says
        hidden = self.trunk.blocks[0].mlp.fc1.out_features
        if hidden != c.intermediate_size:  # guards the mlp_ratio trick against timm changes
            raise RuntimeError(f"timm VisionTransformer built MLP hidden {hidden}, expected {c.intermediate_size}")

    @classmethod
    def infer_structure(cls, canonical: Canonical) -> dict[str, Any]:
        """Sizes from timm names (num_heads stays unknown: q/k/v are one fused matrix)."""
        return vit_structure(cls.arch, canonical.tensors, cls.num_prefix_tokens, mlp_in="blocks.0.mlp.fc1.weight",
                             qkv_bias="blocks.0.attn.qkv.bias")

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        return t.norm_pre(t.patch_embed(pixel_values) + t.pos_embed)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.trunk.blocks

    def embedding_parameters(self) -> list[nn.Parameter]:
        t = self.trunk
        return [t.pos_embed, *t.patch_embed.parameters(), *t.norm_pre.parameters()]

    def canonical_key_map(self) -> dict[str, str]:
        return {k[len("trunk."):]: k for k in self.state_dict() if k.startswith("trunk.")}

    def init_non_persistent_buffers(self) -> None:
        """timm's ViT keeps every tensor in its state dict: nothing to recompute."""
