"""LLaVA's own checkpoint format (haotian-liu/LLaVA: `LlavaLlamaForCausalLM`, `LlavaMistralForCausalLM`).

A LLaVA checkpoint is the LLM's config.json plus `mm_*` fields, read the way llava/model/builder.py reads it:
- full model (e.g. liuhaotian/llava-v1.5-7b): the LLM's weights plus `model.mm_projector.*`, sharded or not,
  with or without the frozen tower's `model.vision_tower.vision_tower.*` (LLaVA saves them but loads
  `mm_vision_tower` by name; a frozen tower's saved weights are that tower, so they are used when present);
- LoRA (e.g. llava-v1.5-7b-lora): `adapter_config.json` + `adapter_model.*` + `non_lora_trainables.bin`
  (projector, possibly tower) on a base LLM given with `--model-base`, as LLaVA's `--model-base`;
- stage-1 projector (`mm_projector.bin`) on a base LLM given with `--model-base`.
`mm_vision_select_layer`/`mm_vision_select_feature` carry over unchanged (our tower uses LLaVA's meaning);
`image_aspect_ratio` "pad" is our pad mode, anything else (LLaVA: CLIP's resize + centre crop) is crop.
"""
from __future__ import annotations

import json
import logging
import os
import re

import torch

from vision_tower.checkpoint import canonicalize
from vision_tower.config import PRESETS, resolve_config
from vision_tower.loader import match_preset

from ..builder import load_tower
from ..config import LoraSpec, TowerSpec
from .assemble import (
    build_llm,
    build_projector,
    build_tower,
    cast_floats,
    check_selection,
)
from .imported import ImportedModel, load_tokenizer_from
from .source import (
    InteropError,
    SourceDir,
    describe_keys,
    read_weight_file,
    split_by_prefix,
)

logger = logging.getLogger(__name__)

FORMAT = "llava"
ARCHITECTURES = {"LlavaLlamaForCausalLM": "llama", "LlavaMistralForCausalLM": "mistral"}
_REFUSED_ARCHITECTURES = {"LlavaMptForCausalLM": "MPT language models need trust_remote_code, which this package never uses"}
# config.json fields that describe LLaVA's multimodal parts, not the language model
_LLAVA_FIELDS = {
    "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length", "tokenizer_padding_side",
    "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "tune_mm_vision_resampler", "unfreeze_mm_vision_tower",
    "use_mm_proj", "s2", "s2_scales", "architectures", "model_type", "_name_or_path", "transformers_version",
}
_MLP = re.compile(r"^mlp(\d+)x_gelu$")


def detect(config: dict) -> bool:
    archs = config.get("architectures") or []
    return "mm_vision_tower" in config or any(a in ARCHITECTURES or a in _REFUSED_ARCHITECTURES for a in archs)


def read(source: SourceDir, *, tower: str | None = None, template: str | None = None,
         image_aspect_ratio: str | None = None, model_base: str | None = None,
         dtype: torch.dtype | None = None) -> ImportedModel:
    """Build our parts from a LLaVA checkpoint directory; every check runs here, before anything is written."""
    cfg, what = source.config, f"{source.origin} (LLaVA format)"
    family = _family(cfg, what)
    settings = _settings(cfg, what)
    layout = _layout(source)
    if layout != "full" and model_base is None:
        raise InteropError(f"{what} is a {layout} checkpoint: pass the LLM it was trained on with --model-base "
                           f"(as LLaVA's --model-base, e.g. lmsys/vicuna-7b-v1.5)")
    if layout == "full" and model_base is not None:
        raise InteropError(f"{what} holds full LLM weights: --model-base applies to LoRA and projector-only checkpoints")
    if model_base is not None and os.path.exists(model_base):
        model_base = os.path.abspath(model_base)  # the manifest must find it from any working directory

    if layout == "full":
        weights = cast_floats(source.read_weights(), dtype)
        parts, llm_state = split_by_prefix(weights, {"model.mm_projector.": "projector", "model.vision_tower.": "tower"})
        llm = build_llm(_text_config(cfg, family), llm_state, what=what)
        hidden = llm.config.hidden_size
        tokenizer = load_tokenizer_from(source.path, what, config=llm.config)
    else:
        parts = _base_layout_parts(source, layout, what, dtype)
        hidden = _base_hidden_size(model_base, what)
        tokenizer = load_tokenizer_from(model_base, f"the base LLM {model_base}")
        llm = None

    vision, spec = _tower(cfg, parts["tower"], tower, settings, what)
    if cfg.get("mm_hidden_size") not in (None, vision.hidden_size):
        raise InteropError(f"{what}: mm_hidden_size is {cfg['mm_hidden_size']} but the vision tower has "
                           f"{vision.hidden_size} features")
    kind = settings["projector_type"]
    projector = build_projector(kind, _projector_state(kind, parts["projector"]), vision.hidden_size, hidden,
                                tower_name=spec.name, what=what, source_name=_llava_projector_name(kind))
    adapter = _adapter(source, model_base, what, dtype) if layout == "lora" else None
    notes = [f"layout: {layout}"]
    if parts["tower"] and tower is not None:
        notes.append(f"the tower weights in the checkpoint were ignored: --tower {tower} given")
    return ImportedModel(
        source=source.origin, source_format=FORMAT, tokenizer=tokenizer, projector=projector, tower_spec=spec,
        template=template or ("plain" if layout == "projector-only" else "vicuna_v1"),
        image_aspect_ratio=image_aspect_ratio or settings["image_aspect_ratio"],
        model_max_length=int(cfg.get("tokenizer_model_max_length") or 2048),
        llm=llm, llm_base=model_base if llm is None else None, adapter=adapter,
        tower=vision if spec.checkpoint is None else None, notes=notes,
    )


# ---------------------------------------------------------------------------------------------- config
def _family(cfg: dict, what: str) -> str:
    archs = cfg.get("architectures") or []
    for arch in archs:
        if arch in _REFUSED_ARCHITECTURES:
            raise InteropError(f"{what}: {arch} is not supported: {_REFUSED_ARCHITECTURES[arch]}")
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    if not archs and cfg.get("model_type") in ("llava", "llava_llama"):
        return "llama"  # early LLaVA configs name no architecture
    raise InteropError(f"{what}: architectures {archs} name no LLaVA language model "
                       f"(supported: {', '.join(ARCHITECTURES)})")


def _settings(cfg: dict, what: str) -> dict:
    """LLaVA's multimodal settings, refusing what our model cannot express."""
    if cfg.get("mm_use_im_start_end"):
        raise InteropError(f"{what}: mm_use_im_start_end=true (images wrapped in <im_start>/<im_end> tokens, "
                           f"LLaVA v0/v1) is not supported; LLaVA-1.5 checkpoints have it false")
    aspect = cfg.get("image_aspect_ratio") or "square"
    merge = cfg.get("mm_patch_merge_type") or "flat"
    if aspect == "anyres" or merge != "flat":
        raise InteropError(f"{what}: image_aspect_ratio={aspect!r}, mm_patch_merge_type={merge!r} is LLaVA-NeXT's "
                           f"any-resolution tiling, which this model does not implement (LLaVA-1.5 layouts only)")
    if cfg.get("s2"):
        raise InteropError(f"{what}: s2 (multi-scale vision features) is not supported")
    if cfg.get("mm_resampler_type"):
        raise InteropError(f"{what}: mm_resampler_type={cfg['mm_resampler_type']!r} is not supported")
    if "mm_vision_select_layer" not in cfg:
        raise InteropError(f"{what}: config.json has no mm_vision_select_layer")
    kind = cfg.get("mm_projector_type") or "linear"  # LLaVA's default
    if kind not in ("linear", "identity") and not _MLP.match(kind):
        raise InteropError(f"{what}: mm_projector_type {kind!r} is not one of linear, identity, mlp<N>x_gelu")
    return {"select_layer": cfg["mm_vision_select_layer"], "select_feature": cfg.get("mm_vision_select_feature") or "patch",
            "projector_type": kind, "image_aspect_ratio": "pad" if aspect == "pad" else "crop",
            "vision_tower": cfg.get("mm_vision_tower")}


def _text_config(cfg: dict, family: str):
    from transformers import AutoConfig

    fields = {k: v for k, v in cfg.items() if not k.startswith("mm_") and k not in _LLAVA_FIELDS
              and not (k == "rope_scaling" and v is None)}  # transformers 5 warns about a null rope_scaling
    return AutoConfig.for_model(family, **fields)


def _layout(source: SourceDir) -> str:
    if source.file("adapter_config.json"):
        return "lora"
    if any(source.file(n) for n in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                                    "pytorch_model.bin.index.json")):
        return "full"
    if source.file("mm_projector.bin"):
        return "projector-only"
    raise InteropError(f"{source.origin} has a LLaVA config.json but no weights: expected model weights, a LoRA "
                       f"adapter (adapter_config.json) or mm_projector.bin")


# ---------------------------------------------------------------------------------------------- tower
def _preset_by_hub_id(name: str | None):
    return next((key for key, p in PRESETS.items() if name and p.hub_id == name), None)


def _tower_name(name: str | None) -> str | None:
    """A preset's name for its hub id, a directory's name for a path, else the name as given."""
    if not name:
        return None
    preset = _preset_by_hub_id(name)
    if preset:
        return preset
    return os.path.basename(os.path.normpath(name)) if os.path.isabs(name) or os.path.exists(name) else name


def _tower_config_for(name: str | None):
    """The tower config `mm_vision_tower` names: a preset (by hub id), a local directory's config.json, or None."""
    preset = _preset_by_hub_id(name)
    if preset:
        return PRESETS[preset]
    if name and os.path.isfile(os.path.join(name, "config.json")):
        return resolve_config(os.path.join(name, "config.json"))
    return None


def _tower(cfg: dict, embedded: dict, override: str | None, settings: dict, what: str):
    """(tower, spec): the checkpoint's own tower weights when present, else the tower `mm_vision_tower` names."""
    named = override or settings["vision_tower"]
    select = {"select_layer": settings["select_layer"], "select_feature": settings["select_feature"]}
    if embedded and override is None:
        config = _tower_config_for(named)
        if config is None and not _shapes_match_a_preset(embedded):
            raise InteropError(f"{what}: the checkpoint holds the vision tower's weights but not its config, and "
                               f"mm_vision_tower {named!r} is neither a known tower nor a local directory: pass "
                               f"--tower DIR, a local copy of that tower")
        tower = build_tower(embedded, config, what=what, name=_tower_name(named), **select)
        return tower, TowerSpec(checkpoint=None, config=None, name=tower.config.name, **select)
    if not named:
        raise InteropError(f"{what}: the vision tower is missing: the checkpoint holds no tower weights and "
                           f"config.json names no mm_vision_tower")
    checkpoint = os.path.abspath(named) if os.path.exists(named) else named
    spec = TowerSpec(checkpoint=checkpoint, config=_preset_by_hub_id(named), name=_tower_name(named), **select)
    try:
        tower = load_tower(spec)
    except (OSError, ValueError) as exc:
        raise InteropError(f"{what}: the vision tower is missing: the checkpoint holds no tower weights and "
                           f"{named!r} could not be loaded ({exc}); pass a local copy with --tower DIR") from exc
    check_selection(spec.select_layer, spec.select_feature, tower.config.num_layers, what)
    return tower, spec


def _llava_projector_name(kind: str):
    strip = "layers.0." if kind == "linear" else "layers."
    return lambda key: "model.mm_projector." + (key.removeprefix(strip))


def _shapes_match_a_preset(tensors: dict) -> bool:
    try:
        match_preset(canonicalize(tensors))
    except ValueError:
        return False
    return True


def _projector_state(kind: str, raw: dict) -> dict:
    """LLaVA's `mm_projector` is an nn.Linear for `linear` and an nn.Sequential otherwise; ours is a Sequential."""
    if kind == "linear":
        return {f"layers.0.{k}": v for k, v in raw.items()}
    return {f"layers.{k}": v for k, v in raw.items()}


# ---------------------------------------------------------------------------------------------- LoRA, projector-only
def _base_layout_parts(source: SourceDir, layout: str, what: str, dtype) -> dict:
    """Projector (and tower) tensors of a LoRA or projector-only checkpoint, under LLaVA's model.* names."""
    name = "non_lora_trainables.bin" if layout == "lora" else "mm_projector.bin"
    path = source.file(name)
    if path is None:
        raise InteropError(f"{what}: {name} is missing (it holds the projector)")
    raw = cast_floats(read_weight_file(path), dtype)
    # LLaVA's builder: strip peft's `base_model.` then a doubled `model.` (`model.model.mm_projector...`)
    raw = {k.removeprefix("base_model."): v for k, v in raw.items()}
    if any(k.startswith("model.model.") for k in raw):
        raw = {k.removeprefix("model."): v for k, v in raw.items()}
    parts, rest = split_by_prefix(raw, {"model.mm_projector.": "projector", "model.vision_tower.": "tower"})
    if rest:
        raise InteropError(f"{what}: {name} holds tensors other than the projector and tower, which a LoRA "
                           f"adapter cannot carry: {describe_keys(rest)}")
    if not parts["projector"]:
        raise InteropError(f"{what}: {name} holds no mm_projector weights")
    return parts


def _base_hidden_size(model_base: str, what: str) -> int:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_base, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise InteropError(f"{what}: cannot read the base LLM's config from {model_base!r}: {exc}") from exc
    return config.get_text_config().hidden_size


def _adapter(source: SourceDir, model_base: str, what: str, dtype) -> tuple[LoraSpec, dict, dict]:
    """LLaVA's peft adapter, checked against the base LLM's shapes (built on the meta device)."""
    config = json.loads(source.path.joinpath("adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise InteropError(f"{what}: adapter type {config.get('peft_type')!r} is not LoRA")
    if "r" not in config or not config.get("target_modules"):
        raise InteropError(f"{what}: adapter_config.json lacks r or target_modules")
    weights_path = source.file("adapter_model.safetensors") or source.file("adapter_model.bin")
    if weights_path is None:
        raise InteropError(f"{what}: adapter_config.json without adapter_model.safetensors or adapter_model.bin")
    tensors = cast_floats(read_weight_file(weights_path), dtype)
    spec = LoraSpec(r=int(config["r"]), alpha=int(config.get("lora_alpha", config["r"])),
                    dropout=float(config.get("lora_dropout", 0.0)), target_modules=config["target_modules"])
    peft_config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": spec.r, "lora_alpha": spec.alpha,
                   "lora_dropout": spec.dropout, "target_modules": spec.target_modules,
                   "bias": config.get("bias", "none"), "fan_in_fan_out": bool(config.get("fan_in_fan_out", False)),
                   "base_model_name_or_path": model_base}
    _check_adapter(model_base, peft_config, tensors, what)
    return spec, peft_config, tensors


def _check_adapter(model_base: str, peft_config: dict, tensors: dict, what: str) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_base, trust_remote_code=False))
        model = get_peft_model(base, LoraConfig(**{k: v for k, v in peft_config.items() if k != "peft_type"}))
    expected = {k.replace(".default.", "."): tuple(v.shape) for k, v in model.state_dict().items() if "lora_" in k}
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    shapes = [k for k, v in tensors.items() if k in expected and tuple(v.shape) != expected[k]]
    if missing or unexpected or shapes:
        parts = [f"{len(keys)} {label}: {describe_keys(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("with another shape", shapes)) if keys]
        raise InteropError(f"{what}: the LoRA adapter does not fit the base LLM {model_base}: " + "; ".join(parts))

