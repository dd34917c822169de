"""The projector registry: projector type name → the `Projector` subclass that implements it.

A key is a type name pattern; `{name}` in it matches a positive integer that is passed to the class as a
keyword parameter (`mlp{depth}x_gelu` → `depth=2` for `mlp2x_gelu`). Adding a projector is one module plus one
line here; the class declares how many tokens it outputs for a tower's patch grid (`Projector.output_tokens`),
so nothing else in the project computes the LLM's image-token count.
"""
from __future__ import annotations

import importlib
import re
from functools import lru_cache

# type name pattern -> "module:Class"
PROJECTORS: dict[str, str] = {
    "linear": "projector.mlp:LinearProjector",
    "mlp{depth}x_gelu": "projector.mlp:MLPProjector",
    "identity": "projector.identity:IdentityProjector",
    "pixel_shuffle{k}_mlp{depth}x_gelu": "projector.pixel_shuffle:PixelShuffleMLPProjector",
    "pixel_shuffle_mlp{depth}x_gelu": "projector.pixel_shuffle:PixelShuffleMLPProjector",  # k = 2
}


class UnknownProjectorError(ValueError):
    """A projector type name that no registered pattern matches (or with a parameter out of range)."""


@lru_cache(maxsize=None)
def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>\\d+)" for i, p in enumerate(parts))
    return re.compile(regex)


def _example(template: str) -> str:
    return re.sub(r"\{\w+\}", "2", template)


def projector_class(projector_type: str) -> tuple[type, dict[str, int]]:
    """(class, integer parameters parsed from the name) for a projector type such as `mlp2x_gelu`."""
    for template, target in PROJECTORS.items():
        match = _pattern(template).fullmatch(str(projector_type))
        if match is None:
            continue
        params = {k: int(v) for k, v in match.groupdict().items()}
        bad = [k for k, v in params.items() if v < 1]
        if bad:
            raise UnknownProjectorError(f"projector type {projector_type!r}: {', '.join(bad)} must be >= 1")
        module_name, class_name = target.split(":")
        return getattr(importlib.import_module(module_name), class_name), params
    known = ", ".join(t if "{" not in t else f"{t} (e.g. {_example(t)})" for t in PROJECTORS)
    raise UnknownProjectorError(f"unknown projector type {projector_type!r}; registered: {known}")


def image_token_count(projector_type: str, grid: tuple[int, int], prefix_tokens: int = 0) -> int:
    """LLM tokens per image for a tower whose features are `prefix_tokens` + a `grid` of patches (`ValueError`
    when the projector cannot project them: no count for a geometry the model would refuse)."""
    cls, params = projector_class(projector_type)
    cls.check(tuple(grid), prefix_tokens, **params)
    return cls.output_tokens(tuple(grid), prefix_tokens, **params)


def check_projector(projector_type: str, grid: tuple[int, int], prefix_tokens: int = 0) -> None:
    """Raise `ValueError` when the type is unknown or cannot project this tower's features (cheap: no weights)."""
    cls, params = projector_class(projector_type)
    cls.check(tuple(grid), prefix_tokens, **params)
