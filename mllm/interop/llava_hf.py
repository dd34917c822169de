"""Importing transformers' llava-hf format (`LlavaForConditionalGeneration`, e.g. llava-hf/llava-1.5-7b-hf).

Semantics carried over: `vision_feature_layer` (an index into the CLIP tower's hidden states, LLaVA's
`mm_vision_select_layer`), `vision_feature_select_strategy` ("default" drops CLS = our `patch`, "full" keeps it
= `cls_patch`), the projector (linear_1, GELU, linear_2 = our `mlp2x_gelu`), the image processor (do_pad = our
`pad`, centre crop = `crop`, else `resize`). The `<image>` token is already in llava-hf vocabularies; our model
overwrites its positions and never looks it up, as transformers' Llava does. Weights saved by transformers 4
(`language_model.model.*`, `vision_tower.vision_model.*`) and 5 (`model.language_model.*`) are both read.
"""
from __future__ import annotations

import json
import logging

import torch

from vision_tower import from_hf_clip_config

from ..config import TowerSpec
from .assemble import build_llm, build_projector, build_tower, cast_floats
from .imported import ImportedModel, load_tokenizer_from
from .source import InteropError, SourceDir, describe_keys, split_by_prefix

logger = logging.getLogger(__name__)

FORMAT = "llava-hf"
ARCHITECTURE = "LlavaForConditionalGeneration"
EXPORT_INFO = "llm2clip_llava.json"  # written by our export: template, image mode and tower name, for round trips
_OTHER_HF_LLAVAS = ("LlavaNextForConditionalGeneration", "LlavaNextVideoForConditionalGeneration",
                    "LlavaOnevisionForConditionalGeneration", "VipLlavaForConditionalGeneration")
_PREFIXES = {
    "language_model.model.": "decoder", "model.language_model.": "decoder",
    "language_model.lm_head.": "lm_head", "lm_head.": "lm_head",
    "vision_tower.": "tower", "model.vision_tower.": "tower",
    "multi_modal_projector.": "projector", "model.multi_modal_projector.": "projector",
}
_PROJECTOR_NAMES = {"linear_1.": "layers.0.", "linear_2.": "layers.2."}


def detect(config: dict) -> bool:
    archs = config.get("architectures") or []
    return ARCHITECTURE in archs or any(a in _OTHER_HF_LLAVAS for a in archs) or (
        config.get("model_type") == "llava" and "vision_config" in config)


def read(source: SourceDir, *, tower: str | None = None, template: str | None = None,
         image_aspect_ratio: str | None = None, model_base: str | None = None,
         dtype: torch.dtype | None = None) -> ImportedModel:
    what = f"{source.origin} (llava-hf format)"
    archs = source.config.get("architectures") or []
    other = [a for a in archs if a in _OTHER_HF_LLAVAS]
    if other:
        raise InteropError(f"{what}: {other[0]} (any-resolution tiling / video) is not supported; "
                           f"only {ARCHITECTURE} (LLaVA-1.5 layout) is")
    if tower is not None or model_base is not None:
        raise InteropError(f"{what}: --tower and --model-base apply to LLaVA-format checkpoints; a llava-hf "
                           f"checkpoint carries its tower and full LLM weights")
    config = _config(source, what)
    select = _selection(config, what)
    image = _image_settings(source, config, what)
    info = _export_info(source)

    weights = cast_floats(source.read_weights(), dtype)
    parts, rest = split_by_prefix(weights, _PREFIXES)
    if rest:
        raise InteropError(f"{what}: {len(rest)} tensor(s) belong to no part of a Llava model: {describe_keys(rest)}")
    llm_state = {f"model.{k}": v for k, v in parts["decoder"].items()}
    llm_state.update({f"lm_head.{k}": v for k, v in parts["lm_head"].items()})
    llm = build_llm(config.text_config, llm_state, what=what)

    tower_name = info.get("tower_name") or f"{source.origin}:vision_tower"
    vision = build_tower(parts["tower"], _tower_config(config.vision_config, image), what=what, name=tower_name, **select)
    projector = build_projector("mlp2x_gelu", _projector_state(parts["projector"]), vision.hidden_size,
                                llm.config.hidden_size, tower_name=tower_name, what=what, source_name=_hf_projector_name)
    tokenizer = load_tokenizer_from(source.path, what)
    image_aspect_ratio = image_aspect_ratio or info.get("image_aspect_ratio") or image["image_aspect_ratio"]
    return ImportedModel(
        source=source.origin, source_format=FORMAT, tokenizer=tokenizer, projector=projector,
        tower_spec=TowerSpec(checkpoint=None, config=None, name=tower_name, **select),
        template=template or info.get("template") or "vicuna_v1", image_aspect_ratio=image_aspect_ratio,
        model_max_length=int(info.get("model_max_length") or min(2048, config.text_config.max_position_embeddings)),
        llm=llm, tower=vision,
        notes=[f"image token: {config.image_token_id} (in the vocabulary; its positions are overwritten)"],
    )


def _config(source: SourceDir, what: str):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(source.path), trust_remote_code=False)
    except (OSError, ValueError, TypeError) as exc:
        raise InteropError(f"{what}: transformers cannot read its config.json ({exc})") from exc
    vision_type = getattr(config.vision_config, "model_type", None)
    if vision_type not in ("clip_vision_model", "clip"):
        raise InteropError(f"{what}: vision tower type {vision_type!r} is not supported; llava-hf imports need a "
                           f"CLIP vision tower (clip_vision_model)")
    if config.projector_hidden_act != "gelu" or not getattr(config, "multimodal_projector_bias", True):
        raise InteropError(f"{what}: projector with activation {config.projector_hidden_act!r} and bias "
                           f"{getattr(config, 'multimodal_projector_bias', True)} is not our mlp2x_gelu "
                           f"(GELU between two biased linears)")
    return config


def _selection(config, what: str) -> dict:
    layer = config.vision_feature_layer
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise InteropError(f"{what}: vision_feature_layer {layer!r} concatenates several layers; only one layer "
                           f"(LLaVA-1.5's -2) is supported")
    strategy = config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise InteropError(f"{what}: vision_feature_select_strategy {strategy!r} is not default or full")
    return {"select_layer": layer, "select_feature": "patch" if strategy == "default" else "cls_patch"}


def _image_settings(source: SourceDir, config, what: str) -> dict:
    """The image processor's geometry as our `image_aspect_ratio`, checked against the tower's input size."""
    settings = None
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = source.file(name)
        if path is not None:
            data = json.loads(path.read_text())
            settings = data.get("image_processor", data) if name == "processor_config.json" else data
            if "image_mean" in settings or "do_pad" in settings or "crop_size" in settings:
                break
            settings = None
    size = config.vision_config.image_size
    if settings is None:
        logger.info("%s has no image processor config: assuming CLIP's resize + centre crop at %d", what, size)
        return {"image_aspect_ratio": "crop", "mean": None, "std": None}
    if settings.get("do_pad"):
        image_aspect_ratio = "pad"
    elif settings.get("do_center_crop", True):
        image_aspect_ratio = "crop"
    else:
        image_aspect_ratio = "resize"
    final = settings.get("crop_size") if image_aspect_ratio == "crop" else settings.get("size")
    side = _side(final)
    if side is not None and side != size:
        raise InteropError(f"{what}: the image processor produces {side}px images but the vision tower takes {size}px")
    return {"image_aspect_ratio": image_aspect_ratio, "mean": settings.get("image_mean"),
            "std": settings.get("image_std")}


def _side(size) -> int | None:
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        if "height" in size and size.get("height") == size.get("width"):
            return int(size["height"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"])
    return None


def _tower_config(vision_config, image: dict):
    config = from_hf_clip_config(vision_config.to_dict())
    if image["mean"] is not None and image["std"] is not None:
        config = config.replace(image_mean=tuple(image["mean"]), image_std=tuple(image["std"]))
    return config


def _projector_state(raw: dict) -> dict:
    out = {}
    for key, value in raw.items():
        for theirs, ours in _PROJECTOR_NAMES.items():
            if key.startswith(theirs):
                out[ours + key[len(theirs):]] = value
                break
        else:
            out[key] = value  # reported as unexpected by build_projector
    return out


def _hf_projector_name(key: str) -> str:
    for theirs, ours in _PROJECTOR_NAMES.items():
        if key.startswith(ours):
            return "multi_modal_projector." + theirs + key[len(ours):]
    return "multi_modal_projector." + key


def _export_info(source: SourceDir) -> dict:
    path = source.file(EXPORT_INFO)
    return json.loads(path.read_text()) if path is not None else {}

