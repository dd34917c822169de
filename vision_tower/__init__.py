"""Vision towers for llm2clip-llava: a registry of architectures (`registry.TOWERS`: the LLM2CLIP EVA02 encoder on
timm `Eva`, OpenAI CLIP on transformers, LLM2CLIP's SigLIP2 So400m on timm `VisionTransformer`), checkpoint
loading for every layout they ship in, and image loading/preprocessing.

Exports are imported lazily, so the torch-free parts (`vision_tower.config`, `vision_tower.registry`) can be read
by `llm2clip-llava <command> --help` and the checks that run before any model loads without importing torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "VisionTower": "vision_tower.base",
    "VisionCheckpointError": "vision_tower.checkpoint",
    "VisionTowerLoadError": "vision_tower.checkpoint",
    "DEFAULT_PRESET": "vision_tower.config",
    "IMAGE_ASPECT_RATIOS": "vision_tower.config",
    "PRESETS": "vision_tower.config",
    "VisionTowerConfig": "vision_tower.config",
    "from_eva_clip_vision_cfg": "vision_tower.config",
    "from_hf_clip_config": "vision_tower.config",
    "ImageLoadError": "vision_tower.image_io",
    "load_image": "vision_tower.image_io",
    "build_vision_tower": "vision_tower.loader",
    "load_vision_tower": "vision_tower.loader",
    "ImageProcessor": "vision_tower.processor",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vision_tower' has no attribute {name!r}")
