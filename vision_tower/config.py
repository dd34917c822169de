"""Vision tower configuration and conversion from EVA-CLIP `vision_cfg` / HF CLIP configs.

One flat dataclass describes every architecture so a tower can be saved, compared and rebuilt from JSON.
Presets are declared by the tower classes (`presets`) and collected by `vision_tower.registry.PRESETS`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

from .registry import ARCHS, PRESETS

logger = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_MODEL_TYPE = "llm2clip_llava_vision_tower"

# Fields that change the network's structure or numerics (as opposed to provenance/preprocessing).
STRUCTURAL_FIELDS = (
    "arch", "image_size", "patch_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
    "layer_norm_eps", "qkv_bias", "rope", "rope_pt_grid", "rope_theta", "layer_scale_init", "hidden_act",
)


@dataclass
class VisionTowerConfig:
    """Everything needed to build a tower. `arch` names a registered tower (`vision_tower.registry.TOWERS`:
    `eva02` = timm `Eva` in the LLM2CLIP/EVA-CLIP layout, `clip` = transformers `CLIPVisionModel`, ...);
    fields an architecture does not use are ignored by it."""

    arch: str = "eva02"
    name: str | None = None
    image_size: int = 336
    patch_size: int = 14
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 2730
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    # eva02 only: 2-D RoPE on patch tokens; positions are rescaled onto a `rope_pt_grid` pretraining grid.
    rope: bool = True
    rope_pt_grid: int = 16
    rope_theta: float = 10000.0
    layer_scale_init: float | None = None
    drop_path_rate: float = 0.0
    # clip only
    hidden_act: str = "quick_gelu"
    # preprocessing (OpenAI CLIP statistics for every supported tower)
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    # provenance
    hub_id: str | None = None
    hub_filename: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        self.validate()

    def validate(self) -> None:
        problems = []
        if self.arch not in ARCHS:
            problems.append(f"arch must be one of {ARCHS}, got {self.arch!r}")
        for name in ("image_size", "patch_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive int, got {value!r}")
        if not problems:
            if self.image_size % self.patch_size:
                problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
            if self.hidden_size % self.num_heads:
                problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
            elif self.arch == "eva02" and self.rope and self.head_dim % 4:
                problems.append(f"2-D RoPE needs a head dim divisible by 4, got {self.head_dim}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            problems.append("image_mean/image_std must have 3 entries (std > 0)")
        if problems:
            raise ValueError("invalid VisionTowerConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["image_mean"] = list(self.image_mean)
        out["image_std"] = list(self.image_std)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VisionTowerConfig":
        data = dict(data)
        data.pop("model_type", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VisionTowerConfig field(s): {unknown}")
        return cls(**data)

    def replace(self, **changes: Any) -> "VisionTowerConfig":
        return dataclasses.replace(self, **changes)

    def structure(self) -> dict[str, Any]:
        """The fields that decide weights and numerics; two configs with equal structure build the same net."""
        return {k: getattr(self, k) for k in STRUCTURAL_FIELDS}


DEFAULT_PRESET = "llm2clip-eva02-l-14-336"
# How an image becomes the tower's square input, LLaVA's `image_aspect_ratio` (one name in manifests, training
# flags, chat and demo): "crop" = CLIP's resize + centre crop, "pad" = LLaVA-1.5's square canvas of the mean colour,
# then resize; "resize" = squash to the square.
IMAGE_ASPECT_RATIOS = ("crop", "pad", "resize")
EVA_CLIP_CONFIG_SOURCE = "microsoft/LLM2CLIP llm2clip/eva_clip/model_configs/{}.json"

# Every field EVA-CLIP's `CLIPVisionCfg` accepts (eva_clip/model.py); anything else is a typo or another format.
_EVA_CLIP_VISION_KEYS = {
    "layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "ls_init_value", "patch_dropout",
    "global_average_pool", "drop_path_rate", "timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj",
    "timm_proj_bias", "eva_model_name", "qkv_bias", "fusedLN", "xattn", "postnorm", "rope", "pt_hw_seq_len",
    "intp_freq", "naiveswiglu", "subln",
}


def from_eva_clip_vision_cfg(cfg: Mapping[str, Any], *, quick_gelu: bool = False, name: str | None = None
                             ) -> VisionTowerConfig:
    """Build a config from an EVA-CLIP `vision_cfg` (as in eva_clip/model_configs/*.json).

    A whole model config (with `vision_cfg`, `embed_dim`, `text_cfg`) is accepted too. Kernel choices (`xattn`,
    `fusedLN`) do not change the math and are ignored; options this tower cannot reproduce raise `ValueError`.
    """
    if "vision_cfg" in cfg:
        quick_gelu = bool(cfg.get("quick_gelu", quick_gelu))
        cfg = cfg["vision_cfg"]
    cfg = dict(cfg)
    unknown = sorted(set(cfg) - _EVA_CLIP_VISION_KEYS)
    if unknown:
        raise ValueError(f"not an EVA-CLIP vision_cfg: unknown key(s) {unknown}")
    if cfg.get("timm_model_name"):
        raise ValueError("vision_cfg uses timm_model_name (a timm trunk); only EVA and CLIP ViT towers are supported")
    layers, width = cfg.get("layers", 12), cfg.get("width", 768)
    if isinstance(layers, (list, tuple)):
        raise ValueError("vision_cfg describes a ModifiedResNet (layers is a list); not supported")
    head_width = cfg.get("head_width", 64)
    if width % head_width:
        raise ValueError(f"vision_cfg width {width} is not divisible by head_width {head_width}")
    image_size, patch_size = _square(cfg.get("image_size", 224), "image_size"), _square(cfg.get("patch_size", 16), "patch_size")
    common = dict(
        name=name or cfg.get("eva_model_name"), image_size=image_size, patch_size=patch_size, hidden_size=width,
        num_layers=layers, num_heads=width // head_width,
        intermediate_size=int(width * cfg.get("mlp_ratio", 4.0)),  # EVA-CLIP truncates: int(1024*2.6667) = 2730
    )
    if not cfg.get("eva_model_name"):
        # EVA-CLIP's own VisionTransformer is the OpenAI CLIP layout (ln_pre, no RoPE), LayerNorm eps 1e-5.
        if cfg.get("ls_init_value") is not None:
            raise ValueError("layer scale (ls_init_value) in a CLIP vision_cfg is not supported")
        return VisionTowerConfig(arch="clip", layer_norm_eps=1e-5, rope=False,
                                 hidden_act="quick_gelu" if quick_gelu else "gelu", **common)
    bad = []
    if cfg.get("postnorm"):
        bad.append("postnorm=True (EVA02-CLIP-bigE style residual post-norm)")
    if not cfg.get("subln", False) or not cfg.get("naiveswiglu", False):
        bad.append("subln and naiveswiglu must both be true (EVA02); EVA01-style blocks are not supported")
    if cfg.get("global_average_pool"):
        bad.append("global_average_pool=True (mean-pooled fc_norm head)")
    pt_grid = int(cfg.get("pt_hw_seq_len", 16))
    grid = image_size // patch_size
    if cfg.get("rope", False) and not cfg.get("intp_freq", False) and pt_grid != grid:
        bad.append(f"rope without intp_freq needs pt_hw_seq_len == image_size // patch_size ({pt_grid} != {grid})")
    if bad:
        raise ValueError("unsupported EVA-CLIP vision_cfg: " + "; ".join(bad))
    if cfg.get("patch_dropout", 0.0):
        logger.info("vision_cfg patch_dropout=%s ignored: the tower always keeps every patch", cfg["patch_dropout"])
    return VisionTowerConfig(
        arch="eva02", layer_norm_eps=1e-6, qkv_bias=bool(cfg.get("qkv_bias", True)), rope=bool(cfg.get("rope", False)),
        rope_pt_grid=pt_grid, layer_scale_init=cfg.get("ls_init_value"),
        drop_path_rate=float(cfg.get("drop_path_rate") or 0.0), **common,
    )


def from_hf_clip_config(cfg: Mapping[str, Any], *, name: str | None = None) -> VisionTowerConfig:
    """Build a config from a transformers CLIP `config.json` (CLIPConfig or CLIPVisionConfig dict)."""
    vc = dict(cfg.get("vision_config", cfg))
    defaults = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    vc = {**defaults, **{k: v for k, v in vc.items() if v is not None}}
    return VisionTowerConfig(
        arch="clip", name=name, image_size=int(vc["image_size"]), patch_size=int(vc["patch_size"]),
        hidden_size=int(vc["hidden_size"]), num_layers=int(vc["num_hidden_layers"]),
        num_heads=int(vc["num_attention_heads"]), intermediate_size=int(vc["intermediate_size"]),
        layer_norm_eps=float(vc["layer_norm_eps"]), hidden_act=str(vc["hidden_act"]), rope=False,
    )


def _square(value: Any, what: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"only square {what} is supported, got {value}")
        value = value[0]
    return int(value)


def resolve_config(config: Any) -> VisionTowerConfig:
    """Accept a `VisionTowerConfig`, a preset name, a dict (ours, EVA-CLIP or HF CLIP) or a JSON file path."""
    if isinstance(config, VisionTowerConfig):
        return config
    if isinstance(config, str) and config in PRESETS:
        return PRESETS[config]
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if not os.path.isfile(path):
            raise ValueError(f"config {path!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"could not read config JSON {path!r}: {exc}") from exc
        return config_from_dict(data, origin=path)
    if isinstance(config, Mapping):
        return config_from_dict(config, origin="dict")
    raise TypeError(f"config must be a VisionTowerConfig, preset name, dict or JSON path, got {type(config).__name__}")


def config_from_dict(data: Mapping[str, Any], *, origin: str = "dict") -> VisionTowerConfig:
    """Dispatch a dict to the right reader: ours (`model_type`/`arch`), EVA-CLIP (`vision_cfg`/`layers`), HF CLIP."""
    if not isinstance(data, Mapping):
        raise ValueError(f"config {origin} is not a JSON object")
    if data.get("model_type") == CONFIG_MODEL_TYPE or "arch" in data:
        return VisionTowerConfig.from_dict(data)
    if "vision_cfg" in data or "layers" in data or "width" in data:
        return from_eva_clip_vision_cfg(data)
    if data.get("model_type") in ("clip", "clip_vision_model") or (
            "vision_config" in data and data.get("model_type", "").startswith("clip")):
        return from_hf_clip_config(data)
    raise ValueError(
        f"config {origin} is not recognised: expected this project's tower config, an EVA-CLIP vision_cfg "
        f"(keys like layers/width/patch_size) or a transformers CLIP config; got keys {sorted(data)[:12]}"
    )
