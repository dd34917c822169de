"""Projectors map vision-tower features into the LLM's embedding space (LLaVA's `mm_projector`)."""
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

__all__ = [
    "PROJECTOR_CONFIG_NAME",
    "PROJECTOR_WEIGHTS_NAME",
    "Projector",
    "ProjectorConfig",
    "ProjectorMismatchError",
    "build_projector",
    "load_projector",
    "save_projector",
]
