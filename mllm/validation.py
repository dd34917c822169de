"""Cheap checks of a whole `ModelSpec` before any weights load, so a bad option fails in seconds, not after the LLM.

Only configs and file names are read (a tower preset, a saved `config.json`, the registries); every problem is
collected and reported as one `ModelSpecError` line. What only the weights can tell (a single checkpoint file's
depth, the LLM's width) is still checked by the loaders.
"""
from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub.constants as hub_constants
from huggingface_hub.file_download import repo_folder_name

from projector.registry import UnknownProjectorError, check_projector, projector_class
from vision_tower.base import SELECT_FEATURES
from vision_tower.config import IMAGE_ASPECT_RATIOS
from vision_tower.loader import declared_config, is_hub_id
from vision_tower.registry import tower_class

from .config import QUANTIZATIONS, ModelSpec, ModelSpecError
from .templates import TEMPLATES


def validate_spec(spec: ModelSpec, *, train_llm: bool = False, unfreeze_tower_blocks: int = 0) -> None:
    """Raise `ModelSpecError` naming every problem of `spec` (plus the build options given) in one line."""
    problems = [
        *_source_problems("llm", spec.llm),
        *_projector_type_problems(spec),
        *_tower_problems(spec, unfreeze_tower_blocks),
        *_text_and_image_problems(spec),
        *_llm_loading_problems(spec, train_llm),
    ]
    if problems:
        raise ModelSpecError("invalid model spec: " + "; ".join(problems))


def _projector_type_problems(spec: ModelSpec) -> list[str]:
    try:
        projector_class(spec.projector_type)
    except UnknownProjectorError as exc:
        return [str(exc)]
    return []


def _text_and_image_problems(spec: ModelSpec) -> list[str]:
    problems = []
    if spec.template not in TEMPLATES:
        problems.append(f"template {spec.template!r} is unknown (known: {', '.join(sorted(TEMPLATES))})")
    if spec.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
        problems.append(f"image_aspect_ratio {spec.image_aspect_ratio!r} must be one of "
                        f"{', '.join(IMAGE_ASPECT_RATIOS)}")
    if not _positive_int(spec.model_max_length):
        problems.append(f"model_max_length must be a positive integer, got {spec.model_max_length!r}")
    return problems


def _llm_loading_problems(spec: ModelSpec, train_llm: bool) -> list[str]:
    problems = []
    if spec.quantization not in (None, *QUANTIZATIONS):
        problems.append(f"quantization must be one of {', '.join(QUANTIZATIONS)} or none, got {spec.quantization!r}")
    elif spec.quantization and train_llm:
        problems.append(f"training the whole LLM needs it unquantised (quantization {spec.quantization!r}): "
                        f"use LoRA (mode qlora) or mode full without quantization")
    lora = spec.lora
    if lora is not None:
        if not _positive_int(lora.r):
            problems.append(f"lora r must be a positive integer, got {lora.r!r}")
        if isinstance(lora.alpha, bool) or not isinstance(lora.alpha, (int, float)) or lora.alpha <= 0:
            problems.append(f"lora alpha must be positive, got {lora.alpha!r}")
        if isinstance(lora.dropout, bool) or not isinstance(lora.dropout, (int, float)) or not 0 <= lora.dropout < 1:
            problems.append(f"lora dropout must be in [0, 1), got {lora.dropout!r}")
        if not lora.target_modules:
            problems.append("lora target_modules is empty")
    return problems


def _tower_problems(spec: ModelSpec, unfreeze_tower_blocks: int) -> list[str]:
    tower = spec.tower
    problems = [] if tower.checkpoint is None else _source_problems("tower checkpoint", tower.checkpoint)
    try:
        config = declared_config(tower.checkpoint, tower.config) if not problems else None
    except (ValueError, TypeError, OSError) as exc:
        return problems + [f"tower: {exc}"]
    if tower.select_feature not in SELECT_FEATURES:
        problems.append(f"select_feature must be one of {', '.join(SELECT_FEATURES)}, got {tower.select_feature!r}")
    if config is None:  # only the weights tell the tower's sizes: the loaders check the rest
        return problems
    if tower.checkpoint is None and not config.hub_id:
        problems.append(f"tower {config.name or config.arch} names no hub checkpoint: set the tower checkpoint "
                        f"(a file or directory of its weights)")
    name = config.name or config.arch
    depth, prefix = config.num_layers, tower_class(config.arch).num_prefix_tokens
    layer = tower.select_layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not -depth - 1 <= layer <= depth:
        problems.append(f"select_layer {layer!r} is out of range for tower {name} ({depth} blocks: "
                        f"{-depth - 1}..{depth})")
    elif not isinstance(unfreeze_tower_blocks, int) or not 0 <= unfreeze_tower_blocks <= layer % (depth + 1):
        problems.append(f"unfreeze_tower_blocks {unfreeze_tower_blocks!r} must be in [0, {layer % (depth + 1)}] "
                        f"(the blocks that feed select_layer {layer})")
    if tower.select_feature == "cls_patch" and not prefix:
        problems.append(f"select_feature 'cls_patch' needs a CLS token; tower {name} ({config.arch}) has none")
    kept_prefix = prefix if tower.select_feature == "cls_patch" else 0
    try:
        check_projector(spec.projector_type, (config.grid_size, config.grid_size), kept_prefix)
    except UnknownProjectorError:
        pass  # reported once, by _projector_type_problems
    except ValueError as exc:
        problems.append(f"projector_type {spec.projector_type!r} cannot project tower {name} "
                        f"({config.grid_size}x{config.grid_size} grid): {exc}")
    return problems


def _source_problems(what: str, source) -> list[str]:
    """A model source must be an existing path or a hub id (offline: one already in the local hub cache)."""
    text = os.fspath(source) if source is not None else ""
    if not text:
        return [f"{what} is not set"]
    if os.path.exists(text):
        return []
    if not is_hub_id(text):
        return [f"{what} {text!r} is not an existing file or directory, nor a hub id (owner/name)"]
    if hub_constants.HF_HUB_OFFLINE and not _in_hub_cache(text):
        return [f"{what} {text!r} is a hub id that is not in the local cache ({hub_constants.HF_HUB_CACHE}) and "
                f"HF_HUB_OFFLINE is set: download it first or pass a local path"]
    return []


def _in_hub_cache(repo_id: str) -> bool:
    snapshots = Path(hub_constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
