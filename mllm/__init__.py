"""llm2clip-llava: a LLaVA-style multimodal LLM with the LLM2CLIP EVA02 vision tower.

Public entry points are imported lazily so that `llm2clip-llava --help` does not import torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "MLLM": "mllm.modeling",
    "MLLMOutput": "mllm.modeling",
    "ImageCountError": "mllm.errors",
    "MLLMConfig": "mllm.config",
    "ModelSpec": "mllm.config",
    "ModelSpecError": "mllm.config",
    "TowerSpec": "mllm.config",
    "LoraSpec": "mllm.config",
    "ManifestError": "mllm.config",
    "MLLMProcessor": "mllm.processor",
    "build_model": "mllm.builder",
    "validate_spec": "mllm.validation",
    "load_model": "mllm.serialization",
    "save_pretrained": "mllm.serialization",
    "merge_checkpoint": "mllm.merge",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mllm' has no attribute {name!r}")
