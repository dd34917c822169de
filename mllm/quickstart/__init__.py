"""The CPU quickstart: a synthetic shapes dataset and a tiny model of the real architectures, trained end to end."""
from .synthetic import (
    CATEGORIES,
    PALETTE,
    SHAPES,
    SHORT_ANSWER_SUFFIX,
    ShapesConfig,
    chance_levels,
    generate,
    normalize_answer,
    score,
)

__all__ = [
    "CATEGORIES",
    "PALETTE",
    "SHAPES",
    "SHORT_ANSWER_SUFFIX",
    "ShapesConfig",
    "chance_levels",
    "generate",
    "normalize_answer",
    "score",
]
