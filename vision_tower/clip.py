"""OpenAI-CLIP ViT tower on transformers' `CLIPVisionModel` (the LLaVA-1.5 baseline tower).

Hidden-state semantics follow HF/LLaVA: `hidden_states[0]` is the embedding output *after* `pre_layrnorm`,
`hidden_states[i]` the output of encoder layer i; `post_layernorm` only pools CLS and is never applied here.
Canonical checkpoint names are transformers' CLIP vision names without prefix.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from .base import VisionTower
from .checkpoint import Canonical, CheckpointLayout, block_count, image_size_from_positions
from .config import EVA_CLIP_CONFIG_SOURCE, VisionTowerConfig


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


# ---------------------------------------------------------------------------------------------- layouts
def _from_hf_clip(sd: dict, out: Canonical) -> None:
    for key, value in sd.items():
        if key == "embeddings.position_ids":
            out.ignored.append(key)  # a buffer older transformers saved
        else:
            out.tensors[key] = value


_OPENAI_BLOCK = (("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("attn.out_proj.", "self_attn.out_proj."),
                 ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."))


def _from_openai_clip(sd: dict, out: Canonical) -> None:
    """OpenAI / open_clip / EVA-CLIP `VisionTransformer` names → transformers CLIP names."""
    for key, value in sd.items():
        if key == "conv1.weight":
            out.tensors["embeddings.patch_embedding.weight"] = value
        elif key == "class_embedding":
            out.tensors["embeddings.class_embedding"] = value
        elif key == "positional_embedding":
            out.tensors["embeddings.position_embedding.weight"] = value
        elif key.startswith("ln_pre."):
            out.tensors["pre_layrnorm." + key[len("ln_pre."):]] = value
        elif key.startswith("ln_post."):
            out.tensors["post_layernorm." + key[len("ln_post."):]] = value
        elif key == "proj":
            out.ignored.append(key)
        elif key.startswith("transformer.resblocks."):
            idx, rest = key[len("transformer.resblocks."):].split(".", 1)
            base = f"encoder.layers.{idx}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if rest.endswith("weight") else "bias"
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out.tensors[f"{base}self_attn.{name}.{kind}"] = chunk
                continue
            for src, dst in _OPENAI_BLOCK:
                if rest.startswith(src):
                    out.tensors[base + dst + rest[len(src):]] = value
                    break
            else:
                out.tensors[key] = value
        else:
            out.tensors[key] = value


def _clip_l14_336(name: str, **provenance) -> VisionTowerConfig:
    return VisionTowerConfig(
        arch="clip", name=name, image_size=336, patch_size=14, hidden_size=1024, num_layers=24, num_heads=16,
        intermediate_size=4096, layer_norm_eps=1e-5, rope=False, hidden_act="quick_gelu", **provenance)


# ---------------------------------------------------------------------------------------------- tower
class ClipVisionTower(VisionTower):
    """CLIP ViT with the LLaVA interface of `VisionTower`; weights live in `self.model` (transformers names)."""

    arch = "clip"
    num_prefix_tokens = 1  # CLS
    presets = (
        _clip_l14_336("openai-clip-vit-l-14-336", hub_id="openai/clip-vit-large-patch14-336",
                      source="transformers CLIPVisionModel (openai/clip-vit-large-patch14-336 config.json)"),
        # Same CLIP ViT-L/14-336 structure, weights fine-tuned by LLM2CLIP. QuickGELU is assumed (OpenAI init; not
        # verified for the fine-tune); an HF CLIP config.json next to the weights wins when no config= is passed.
        _clip_l14_336("llm2clip-openai-l-14-336", hub_id="microsoft/LLM2CLIP-Openai-L-14-336",
                      source=EVA_CLIP_CONFIG_SOURCE.format("OpenaiCLIP-L-14-336")),
    )
    layouts = (
        CheckpointLayout("hf_clip", "embeddings.patch_embedding.weight", ("pre_layrnorm.weight",), _from_hf_clip),
        CheckpointLayout("openai_clip", "conv1.weight", ("transformer.resblocks.0.attn.in_proj_weight",),
                         _from_openai_clip),
    )

    def __init__(self, config: VisionTowerConfig, *, select_layer: int = -2, select_feature: str = "patch",
                 device=None):
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

    @classmethod
    def infer_structure(cls, canonical: Canonical) -> dict[str, Any]:
        t = canonical.tensors
        w = t["embeddings.patch_embedding.weight"]
        info = dict(arch=cls.arch, hidden_size=w.shape[0], patch_size=w.shape[-1],
                    intermediate_size=t["encoder.layers.0.mlp.fc1.weight"].shape[0],
                    num_layers=block_count(t, "encoder.layers."))
        rows = t["embeddings.position_embedding.weight"].shape[0]
        info["image_size"] = image_size_from_positions(rows, cls.num_prefix_tokens, info["patch_size"])
        return info

    def init_non_persistent_buffers(self) -> None:
        emb = self._core.embeddings
        with torch.no_grad():
            emb.position_ids.copy_(torch.arange(emb.num_positions, device=emb.position_ids.device).expand(1, -1))
