"""EVA02 tower (LLM2CLIP / EVA-CLIP `EVAVisionTransformer`) built on timm's `Eva`.

timm's `Eva` with separate q/k/v (k without bias), sub-LN in attention and SwiGLU, eps 1e-6, CLS + absolute
position embedding, no pre-norm and 2-D RoPE rescaled onto the pretraining grid (`ref_feat_shape`) is the
same network as `eva_clip/eva_vit_model.py`; only parameter names differ (`checkpoint.EVA_TO_TIMM`).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.layers import LayerNorm
from timm.models.eva import Eva

from .base import VisionTower
from .checkpoint import timm_to_eva_key
from .config import VisionTowerConfig

def build_eva_trunk(config: VisionTowerConfig, device=None) -> Eva:
    """timm `Eva` configured exactly as EVA-CLIP's EVA02 vision tower (no classifier head)."""
    c = config
    trunk = Eva(
        img_size=c.image_size,
        patch_size=c.patch_size,
        num_classes=0,
        global_pool="",
        embed_dim=c.hidden_size,
        depth=c.num_layers,
        num_heads=c.num_heads,
        qkv_bias=c.qkv_bias,
        qkv_fused=False,  # separate q/k/v projections; k_proj never has a bias
        # timm computes int(dim * mlp_ratio); the +0.5 makes that land exactly on intermediate_size.
        mlp_ratio=(c.intermediate_size + 0.5) / c.hidden_size,
        swiglu_mlp=True,
        scale_mlp=True,  # ffn_ln (sub-LN) inside SwiGLU
        scale_attn_inner=True,  # inner_attn_ln before the output projection
        use_rot_pos_emb=c.rope,
        rope_type="cat",
        rope_temperature=c.rope_theta,
        ref_feat_shape=(c.rope_pt_grid, c.rope_pt_grid),
        norm_layer=partial(LayerNorm, eps=c.layer_norm_eps),
        init_values=c.layer_scale_init or None,
        drop_path_rate=c.drop_path_rate,
        class_token=True,
        use_abs_pos_emb=True,
        use_pre_transformer_norm=False,
        use_post_transformer_norm=True,
        use_fc_norm=False,
        device=device,
    )
    for block in trunk.blocks:
        block.attn.fused_attn = True  # F.scaled_dot_product_attention, whatever TIMM_FUSED_ATTN says
    hidden = trunk.blocks[0].mlp.fc1_g.out_features
    if hidden != c.intermediate_size:  # guards the mlp_ratio trick against timm changes
        raise RuntimeError(f"timm Eva built MLP hidden {hidden}, expected {c.intermediate_size}")
    return trunk


class EvaVisionTower(VisionTower):
    """EVA02 ViT with the LLaVA interface of `VisionTower`; weights live in `self.trunk` (timm names)."""

    def __init__(self, config: VisionTowerConfig, *, select_layer: int = -2, select_feature: str = "patch",
                 device=None):
        if config.arch != "eva02":
            raise ValueError(f"EvaVisionTower needs arch 'eva02', got {config.arch!r}")
        super().__init__(config, select_layer=select_layer, select_feature=select_feature)
        self.trunk = build_eva_trunk(config, device=device)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        x = t.patch_embed(pixel_values)
        x = torch.cat([t.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + t.pos_embed

    @property
    def blocks(self) -> nn.ModuleList:
        return self.trunk.blocks

    def block_inputs(self, x: torch.Tensor) -> tuple:
        rope = self.trunk.rope
        return (rope.get_embed(),) if rope is not None else (None,)

    def embedding_parameters(self) -> list[nn.Parameter]:
        t = self.trunk
        return [t.cls_token, t.pos_embed, *t.patch_embed.parameters()]

    def canonical_key_map(self) -> dict[str, str]:
        return {timm_to_eva_key(k[len("trunk."):]): k for k in self.state_dict() if k.startswith("trunk.")}

    def init_non_persistent_buffers(self) -> None:
        for module in self.trunk.modules():
            if hasattr(module, "init_non_persistent_buffers"):
                module.init_non_persistent_buffers()

    def rope_tables(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cos, sin) [num_patches, head_dim] in EVA-CLIP's `freqs_cos/freqs_sin` layout, float32."""
        if self.trunk.rope is None:
            return None
        emb = self.trunk.rope.get_embed().float()
        sin, cos = emb.chunk(2, dim=-1)
        return cos, sin
