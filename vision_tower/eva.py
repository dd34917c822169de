"""EVA02 tower (LLM2CLIP / EVA-CLIP `EVAVisionTransformer`) built on timm's `Eva`.

timm's `Eva` with separate q/k/v (k without bias), sub-LN in attention and SwiGLU, eps 1e-6, CLS + absolute
position embedding, no pre-norm and 2-D RoPE rescaled onto the pretraining grid (`ref_feat_shape`) is the
same network as `eva_clip/eva_vit_model.py`; only parameter names differ (`EVA_TO_TIMM`). Canonical
checkpoint names are EVA-CLIP's (what LLM2CLIP's `.pt` holds under `visual.`).
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import LayerNorm
from timm.models.eva import Eva

from .base import VisionTower
from .checkpoint import (
    Canonical, CheckpointLayout, VisionCheckpointError, vit_structure,
)
from .config import DEFAULT_PRESET, EVA_CLIP_CONFIG_SOURCE, VisionTowerConfig

logger = logging.getLogger(__name__)

# EVA-CLIP name fragment -> timm `Eva` name fragment (inside `blocks.N.`); all other names are identical.
EVA_TO_TIMM = (
    (".mlp.w1.", ".mlp.fc1_g."),
    (".mlp.w2.", ".mlp.fc1_x."),
    (".mlp.w3.", ".mlp.fc2."),
    (".mlp.ffn_ln.", ".mlp.norm."),
    (".attn.inner_attn_ln.", ".attn.norm."),
)


def timm_to_eva_key(key: str) -> str:
    for eva, timm in EVA_TO_TIMM:
        key = key.replace(timm, eva)
    return key


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


# ---------------------------------------------------------------------------------------------- layouts
def _is_rope_buffer(key: str) -> bool:
    return key.endswith(("freqs_cos", "freqs_sin"))


def _from_eva_clip(sd: dict, out: Canonical) -> None:
    for key, value in sd.items():
        # upstream EVA-CLIP checkpoints name the biases q_bias/v_bias (LLM2CLIP's load_checkpoint renames them)
        key = key.replace(".attn.q_bias", ".attn.q_proj.bias").replace(".attn.v_bias", ".attn.v_proj.bias")
        if _is_rope_buffer(key):
            out.rope_tables[key] = value
        elif key.startswith("head."):
            out.ignored.append(key)  # CLIP projection head: not part of the feature trunk
        else:
            out.tensors[key] = value


def _from_timm_eva(sd: dict, out: Canonical) -> None:
    for key, value in sd.items():
        if key.startswith("head."):
            out.ignored.append(key)
        elif _is_rope_buffer(key) or key.endswith(("rope.pos_embed", "rope.bands")):
            out.rope_tables[key] = value
        else:
            out.tensors[timm_to_eva_key(key)] = value


_HF_EVACLIP_BLOCK = (
    ("layer_norm1.", "norm1."), ("layer_norm2.", "norm2."),
    ("self_attn.q_proj.", "attn.q_proj."), ("self_attn.k_proj.", "attn.k_proj."),
    ("self_attn.v_proj.", "attn.v_proj."), ("self_attn.inner_attn_ln.", "attn.inner_attn_ln."),
    ("self_attn.out_proj.", "attn.proj."),
    ("mlp.fc1.", "mlp.w1."), ("mlp.fc2.", "mlp.w2."), ("mlp.fc3.", "mlp.w3."), ("mlp.ffn_ln.", "mlp.ffn_ln."),
)


def _from_hf_evaclip(sd: dict, out: Canonical) -> None:
    """EVA-CLIP's HF port (`modeling_evaclip.py`): CLIP-style names, swiglu fc1 = gate (SiLU), fc2 = linear,
    fc3 = output. Not verified against LLM2CLIP's `pytorch_model.bin`; the `.pt` is the ground truth."""
    logger.warning("mapping an HF EVA-CLIP (modeling_evaclip) layout; its names follow the EVA-CLIP HF port and are "
                   "not verified against LLM2CLIP's file - prefer the EVA-CLIP .pt checkpoint")
    for key, value in sd.items():
        if _is_rope_buffer(key):
            out.rope_tables[key] = value
        elif key == "embeddings.class_embedding":
            out.tensors["cls_token"] = value.reshape(1, 1, -1)
        elif key == "embeddings.position_embedding.weight":
            out.tensors["pos_embed"] = value.unsqueeze(0)
        elif key.startswith("embeddings.patch_embedding."):
            out.tensors["patch_embed.proj." + key[len("embeddings.patch_embedding."):]] = value
        elif key == "embeddings.position_ids":
            out.ignored.append(key)
        elif key.startswith("post_layernorm."):
            out.tensors["norm." + key[len("post_layernorm."):]] = value
        elif key.startswith("encoder.layers."):
            idx, rest = key[len("encoder.layers."):].split(".", 1)
            for src, dst in _HF_EVACLIP_BLOCK:
                if rest.startswith(src):
                    out.tensors[f"blocks.{idx}.{dst}{rest[len(src):]}"] = value
                    break
            else:
                out.tensors[key] = value  # unrecognised: reported as unexpected by the strict load
        else:
            out.tensors[key] = value


def _eva(name: str, *, hub_id=None, hub_filename=None, source=None, **sizes) -> VisionTowerConfig:
    return VisionTowerConfig(arch="eva02", name=name, hub_id=hub_id, hub_filename=hub_filename, source=source, **sizes)


# ---------------------------------------------------------------------------------------------- tower
class EvaVisionTower(VisionTower):
    """EVA02 ViT with the LLaVA interface of `VisionTower`; weights live in `self.trunk` (timm names)."""

    arch = "eva02"
    num_prefix_tokens = 1  # CLS
    presets = (
        _eva(DEFAULT_PRESET, hub_id="microsoft/LLM2CLIP-EVA02-L-14-336",  # "llm2clip-eva02-l-14-336"
             hub_filename="LLM2CLIP-EVA02-L-14-336.pt", source=EVA_CLIP_CONFIG_SOURCE.format("EVA02-CLIP-L-14-336")),
        _eva("llm2clip-eva02-l-14-224", image_size=224, source=EVA_CLIP_CONFIG_SOURCE.format("EVA02-CLIP-L-14")),
        _eva("llm2clip-eva02-b-16", image_size=224, patch_size=16, hidden_size=768, num_layers=12, num_heads=12,
             intermediate_size=2048, source=EVA_CLIP_CONFIG_SOURCE.format("EVA02-CLIP-B-16")),
    )
    layouts = (
        CheckpointLayout("eva_clip", "patch_embed.proj.weight", ("blocks.0.mlp.w1.weight",), _from_eva_clip),
        CheckpointLayout("timm_eva", "patch_embed.proj.weight", ("blocks.0.mlp.fc1_g.weight",), _from_timm_eva),
        CheckpointLayout("hf_evaclip", "embeddings.patch_embedding.weight", ("encoder.layers.0.mlp.fc3.weight",),
                         _from_hf_evaclip),
    )

    def __init__(self, config: VisionTowerConfig, *, select_layer: int = -2, select_feature: str = "patch",
                 device=None):
        super().__init__(config, select_layer=select_layer, select_feature=select_feature)
        self.trunk = build_eva_trunk(config, device=device)

    @classmethod
    def infer_structure(cls, canonical: Canonical) -> dict[str, Any]:
        """Sizes from EVA-CLIP names (num_heads only when RoPE tables reveal the head dim)."""
        info = vit_structure(cls.arch, canonical.tensors, cls.num_prefix_tokens, mlp_in="blocks.0.mlp.w1.weight",
                             qkv_bias="blocks.0.attn.q_proj.bias")
        width = info["hidden_size"]
        cos = next((v for k, v in canonical.rope_tables.items() if k.endswith("freqs_cos")), None)
        if cos is not None and cos.ndim == 2 and cos.shape[-1] and width % cos.shape[-1] == 0:
            info["num_heads"] = width // cos.shape[-1]
        return info

    def check_checkpoint(self, canonical: Canonical) -> None:
        """RoPE tables a checkpoint carries must equal ours: a mismatch means a wrong grid/pt_hw_seq_len config."""
        if not canonical.rope_tables:
            return
        ours = self.rope_tables()
        if ours is None:
            raise VisionCheckpointError("checkpoint has RoPE tables but the config has rope=False")
        cos, sin = ours
        for key, table in canonical.rope_tables.items():
            if not _is_rope_buffer(key):
                continue
            expected = cos if key.endswith("cos") else sin
            if tuple(table.shape) != tuple(expected.shape):
                raise VisionCheckpointError(f"RoPE table {key} has shape {tuple(table.shape)}, the config gives "
                                            f"{tuple(expected.shape)}: wrong image_size/patch_size/num_heads?")
            err = (table.float() - expected).abs().max().item()
            if err > 2e-3:  # fp16 checkpoints round these to ~5e-4
                raise VisionCheckpointError(
                    f"RoPE table {key} differs from the config's by {err:.3g}: the checkpoint was made with another "
                    f"RoPE grid (config pt grid {self.config.rope_pt_grid}, grid {self.config.grid_size})")

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
