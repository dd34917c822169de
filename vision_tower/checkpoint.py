"""Reading weight files and mapping their key layouts onto a tower's canonical names.

Each tower class declares its canonical names (e.g. EVA-CLIP's `EVAVisionTransformer` names without prefix
for eva02, what LLM2CLIP's `.pt` holds under `visual.`) and the `CheckpointLayout`s it can read; this module
detects which registered layout a checkpoint uses, from anchor keys with whatever prefix they carry
(`visual.`, `module.visual.`, `vision_model.`, ...), and converts it.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .registry import tower_class, tower_classes

logger = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "module", "model")
# CLIP text tower / projection names that may sit next to unprefixed vision weights.
_NON_VISION = re.compile(r"^(logit_scale|logit_bias|text\.|text_model\.|text_projection|visual_projection|"
                         r"ln_final\.|token_embedding\.)")


class VisionTowerLoadError(OSError):
    """A checkpoint could not be found, downloaded or read."""


class VisionCheckpointError(ValueError):
    """A checkpoint's vision weights do not fit the tower (missing/unexpected/mis-shaped keys, wrong layout)."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)

    @classmethod
    def from_lists(cls, missing, unexpected, mismatched, config=None) -> "VisionCheckpointError":
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                parts.append(f"{len(items)} {label} vision key(s): {shown}")
        what = f" for config {config.name or config.arch}" if config is not None else ""
        return cls(f"checkpoint does not match the tower{what}: " + "; ".join(parts), missing, unexpected, mismatched)


# ---------------------------------------------------------------------------------------------- reading
def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} dict from .safetensors or a pickle (.pt/.pth/.bin, `weights_only=True` only)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VisionTowerLoadError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as exc:  # safetensors raises its own SafetensorError / OSError
            raise VisionTowerLoadError(f"could not read safetensors file {path}: {exc}") from exc
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        raise VisionTowerLoadError(
            f"refusing to unpickle {path}: it holds objects other than tensors and plain containers "
            f"(only torch.load(weights_only=True) is used): {exc}") from exc
    except Exception as exc:
        raise VisionTowerLoadError(f"could not read checkpoint {path}: {exc}") from exc
    return unwrap_state_dict(obj, origin=path)


def unwrap_state_dict(obj: Any, origin: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Descend through `state_dict`/`module`/`model` wrappers; keep tensor entries only."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise VisionTowerLoadError(f"{origin} does not contain a state dict (got {type(obj).__name__})")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    dropped = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if dropped:
        logger.debug("%s: ignoring %d non-tensor entries (%s)", origin, len(dropped), dropped[:5])
    if not tensors:
        raise VisionTowerLoadError(f"{origin} holds no tensors (top-level keys: {list(obj)[:10]})")
    return tensors


# ---------------------------------------------------------------------------------------------- layouts
@dataclass
class Canonical:
    """Vision weights under canonical names, plus what was set aside."""

    layout: str
    prefix: str
    arch: str
    tensors: dict[str, torch.Tensor]
    rope_tables: dict[str, torch.Tensor] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CheckpointLayout:
    """One way a checkpoint names a tower's weights, declared by the tower class (`VisionTower.layouts`).

    A checkpoint uses this layout under prefix P when it has P+`anchor`, P+each of `requires` and none of
    P+`forbids`; `convert(weights_without_prefix, out)` fills `out.tensors` with the tower's canonical names.
    """

    name: str
    anchor: str
    requires: tuple[str, ...]
    convert: Callable[[dict, "Canonical"], None]
    forbids: tuple[str, ...] = ()

    def prefixes(self, keys: set[str]) -> list[str]:
        found = []
        for key in keys:
            if key.endswith(self.anchor):
                prefix = key[: len(key) - len(self.anchor)]
                if ((prefix == "" or prefix.endswith(".")) and all(prefix + k in keys for k in self.requires)
                        and not any(prefix + k in keys for k in self.forbids)):
                    found.append(prefix)
        return found


def registered_layouts() -> list[tuple[str, CheckpointLayout]]:
    """(arch, layout) for every registered tower, in registry order (earlier wins on a tie)."""
    return [(cls.arch, layout) for cls in tower_classes() for layout in cls.layouts]


def detect_layout(keys) -> tuple[str, str]:
    """(layout, prefix) of the single vision tower in `keys`; errors when there is none or several."""
    keys = set(keys)
    found = [(layout.name, prefix) for _, layout in registered_layouts() for prefix in layout.prefixes(keys)]
    if not found:
        eva_like = [k for k in keys if k.endswith("patch_embed.proj.weight")]
        hint = ""
        if eva_like:
            p = eva_like[0][: -len("patch_embed.proj.weight")]
            hint = (f" (an EVA-style tower under prefix {p!r} without SwiGLU 'mlp.w1'/'mlp.fc1_g' weights: "
                    f"EVA01-style blocks are not supported)")
        names = ", ".join(layout.name for _, layout in registered_layouts())
        raise VisionCheckpointError(
            "no vision tower recognised in the checkpoint" + hint + f"; looked for the layouts {names}; "
            f"sample keys: {sorted(keys)[:8]}")
    if len(found) > 1:  # one prefix matching two layouts: the more specific (earlier in the registry) wins
        by_prefix = {}
        for layout, prefix in found:
            by_prefix.setdefault(prefix, (layout, prefix))
        found = list(by_prefix.values())
    if len(found) > 1:
        raise VisionCheckpointError(f"several vision towers in the checkpoint: {found}; save only the one to load")
    return found[0]


def canonicalize(state_dict: Mapping[str, torch.Tensor]) -> Canonical:
    """Detect the layout and return the vision weights under canonical names."""
    layout_name, prefix = detect_layout(state_dict.keys())
    arch, layout = next((a, lay) for a, lay in registered_layouts() if lay.name == layout_name)
    inside, ignored = {}, []
    for key, value in state_dict.items():
        if key.startswith(prefix) and not _NON_VISION.match(key[len(prefix):]):
            inside[key[len(prefix):]] = value
        else:
            ignored.append(key)
    out = Canonical(layout=layout_name, prefix=prefix, arch=arch, tensors={})
    layout.convert(inside, out)
    out.ignored = ignored + out.ignored
    if out.ignored:
        logger.debug("ignored %d non-vision / projection keys (e.g. %s)", len(out.ignored), out.ignored[:8])
    logger.info("vision weights: layout %s, prefix %r, %d tensors", layout_name, prefix, len(out.tensors))
    return out


# ---------------------------------------------------------------------------------------------- shapes
def infer_structure(c: Canonical) -> dict[str, Any]:
    """Sizes readable from canonical weights, by the tower class of the checkpoint's arch."""
    try:
        return tower_class(c.arch).infer_structure(c)
    except (KeyError, ValueError, IndexError) as exc:
        if isinstance(exc, VisionCheckpointError):
            raise
        raise VisionCheckpointError(f"cannot read the tower's sizes from the checkpoint ({exc!r} missing)") from exc


def block_count(tensors: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of blocks in keys `<prefix><i>.…` (the depth of a ViT)."""
    indices = [int(k[len(prefix):].split(".", 1)[0]) for k in tensors if k.startswith(prefix)]
    if not indices:
        raise KeyError(prefix + "0")
    return 1 + max(indices)


def vit_structure(arch: str, tensors: Mapping[str, torch.Tensor], prefix_tokens: int, *, mlp_in: str,
                  qkv_bias: str) -> dict:
    """Sizes every timm-style ViT checkpoint reveals (`blocks.N.*`, `patch_embed.proj`, `pos_embed`); `mlp_in` is
    the key of block 0's first MLP weight and `qkv_bias` the key whose presence means q/k/v have biases."""
    w = tensors["patch_embed.proj.weight"]
    patch_size = w.shape[-1]
    return dict(arch=arch, hidden_size=w.shape[0], patch_size=patch_size, intermediate_size=tensors[mlp_in].shape[0],
                num_layers=block_count(tensors, "blocks."), qkv_bias=qkv_bias in tensors,
                image_size=image_size_from_positions(tensors["pos_embed"].shape[1], prefix_tokens, patch_size))


def image_size_from_positions(rows: int, prefix_tokens: int, patch_size: int) -> int:
    """Image size of a square patch grid whose position table has `rows` = prefix tokens + grid²."""
    grid = int(round(max(rows - prefix_tokens, 0) ** 0.5))
    if grid == 0 or grid * grid != rows - prefix_tokens:
        what = f"{prefix_tokens} prefix token(s) + a square grid" if prefix_tokens else "a square grid"
        raise VisionCheckpointError(f"position embedding has {rows} rows, not {what}")
    return grid * patch_size
