"""Projectors map vision-tower features into the LLM's embedding space (LLaVA's `mm_projector`).

Each type is a `Projector` subclass registered in `projector.registry.PROJECTORS`; it owns its output token
count (`Projector.output_tokens`, `registry.image_token_count`).
"""
from .builder import (
    PROJECTOR_CONFIG_NAME,
    PROJECTOR_WEIGHTS_NAME,
    Projector,
    ProjectorConfig,
    ProjectorMismatchError,
    build_projector,
    load_projector,
    save_projector,
)
from .registry import PROJECTORS, UnknownProjectorError, check_projector, image_token_count, projector_class

__all__ = [
    "PROJECTOR_CONFIG_NAME",
    "PROJECTOR_WEIGHTS_NAME",
    "PROJECTORS",
    "Projector",
    "ProjectorConfig",
    "ProjectorMismatchError",
    "UnknownProjectorError",
    "build_projector",
    "check_projector",
    "image_token_count",
    "load_projector",
    "projector_class",
    "save_projector",
]
