"""Reading weight files and mapping their key layouts onto a tower's canonical names.

Canonical names: EVA-CLIP's `EVAVisionTransformer` names without prefix for eva02 (what LLM2CLIP's `.pt`
holds under `visual.`), transformers' CLIP vision names without prefix for clip. Layouts are detected from
anchor keys, with whatever prefix they carry (`visual.`, `module.visual.`, `vision_model.`, ...).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch


logger = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "module", "model")
# EVA-CLIP name fragment -> timm `Eva` name fragment (inside `blocks.N.`); all other names are identical.
EVA_TO_TIMM = (
    (".mlp.w1.", ".mlp.fc1_g."),
    (".mlp.w2.", ".mlp.fc1_x."),
    (".mlp.w3.", ".mlp.fc2."),
    (".mlp.ffn_ln.", ".mlp.norm."),
    (".attn.inner_attn_ln.", ".attn.norm."),
)
_RE_BLOCK = re.compile(r"^blocks\.(\d+)\.")
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


def timm_to_eva_key(key: str) -> str:
    for eva, timm in EVA_TO_TIMM:
        key = key.replace(timm, eva)
    return key


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
# layout -> (arch, anchor key suffix that must exist under the prefix, second key that must exist too)
LAYOUTS = {
    "eva_clip": ("eva02", "patch_embed.proj.weight", "blocks.0.mlp.w1.weight"),
    "timm_eva": ("eva02", "patch_embed.proj.weight", "blocks.0.mlp.fc1_g.weight"),
    "hf_evaclip": ("eva02", "embeddings.patch_embedding.weight", "encoder.layers.0.mlp.fc3.weight"),
    "hf_clip": ("clip", "embeddings.patch_embedding.weight", "pre_layrnorm.weight"),
    "openai_clip": ("clip", "conv1.weight", "transformer.resblocks.0.attn.in_proj_weight"),
}


@dataclass
class Canonical:
    """Vision weights under canonical names, plus what was set aside."""

    layout: str
    prefix: str
    arch: str
    tensors: dict[str, torch.Tensor]
    rope_tables: dict[str, torch.Tensor] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


def detect_layout(keys) -> tuple[str, str]:
    """(layout, prefix) of the single vision tower in `keys`; errors when there is none or several."""
    keys = set(keys)
    found = []
    for layout, (_, anchor, second) in LAYOUTS.items():
        for key in keys:
            if key.endswith(anchor):
                prefix = key[: len(key) - len(anchor)]
                if (prefix == "" or prefix.endswith(".")) and prefix + second in keys:
                    found.append((layout, prefix))
    if not found:
        eva_like = [k for k in keys if k.endswith("patch_embed.proj.weight")]
        hint = ""
        if eva_like:
            p = eva_like[0][: -len("patch_embed.proj.weight")]
            hint = (f" (an EVA-style tower under prefix {p!r} without SwiGLU 'mlp.w1'/'mlp.fc1_g' weights: "
                    f"EVA01-style blocks are not supported)")
        raise VisionCheckpointError(
            "no vision tower recognised in the checkpoint" + hint + "; looked for EVA-CLIP (visual.*), timm Eva, "
            f"HF EVA-CLIP, HF CLIP (vision_model.*) and OpenAI CLIP (visual.conv1...) layouts; sample keys: "
            f"{sorted(keys)[:8]}")
    if len(found) > 1:  # one prefix matching two layouts: the more specific (earlier in LAYOUTS) wins
        by_prefix = {}
        for layout, prefix in found:
            by_prefix.setdefault(prefix, (layout, prefix))
        found = list(by_prefix.values())
    if len(found) > 1:
        raise VisionCheckpointError(f"several vision towers in the checkpoint: {found}; save only the one to load")
    return found[0]


def canonicalize(state_dict: Mapping[str, torch.Tensor]) -> Canonical:
    """Detect the layout and return the vision weights under canonical names."""
    layout, prefix = detect_layout(state_dict.keys())
    arch = LAYOUTS[layout][0]
    inside, ignored = {}, []
    for key, value in state_dict.items():
        if key.startswith(prefix) and not _NON_VISION.match(key[len(prefix):]):
            inside[key[len(prefix):]] = value
        else:
            ignored.append(key)
    out = Canonical(layout=layout, prefix=prefix, arch=arch, tensors={})
    convert = {"eva_clip": _from_eva_clip, "timm_eva": _from_timm_eva, "hf_evaclip": _from_hf_evaclip,
               "hf_clip": _from_hf_clip, "openai_clip": _from_openai_clip}[layout]
    convert(inside, out)
    out.ignored = ignored + out.ignored
    if out.ignored:
        logger.debug("ignored %d non-vision / projection keys (e.g. %s)", len(out.ignored), out.ignored[:8])
    logger.info("vision weights: layout %s, prefix %r, %d tensors", layout, prefix, len(out.tensors))
    return out


def _is_rope_buffer(key: str) -> bool:
    return key.endswith(("freqs_cos", "freqs_sin"))


def _from_eva_clip(sd: dict, out: Canonical) -> None:
    for key, value in sd.items():
        # upstream EVA-CLIP checkpoints name the biases q_bias/v_bias (LLM2CLIP's load_checkpoint renames them)
        key = key.replace(".attn.q_bias", ".attn.q_proj.bias").replace(".attn.v_bias", ".attn.v_proj.bias")
        if _is_rope_buffer(key):
            out.rope_tables[key] = value
        elif key.startswith("head."):
            out.ignored.append(key)  # CLIP projection head: not part of the feature trunk
        else:
            out.tensors[key] = value


def _from_timm_eva(sd: dict, out: Canonical) -> None:
    for key, value in sd.items():
        if key.startswith("head."):
            out.ignored.append(key)
        elif _is_rope_buffer(key) or key.endswith(("rope.pos_embed", "rope.bands")):
            out.rope_tables[key] = value
        else:
            out.tensors[timm_to_eva_key(key)] = value


_HF_EVACLIP_BLOCK = (
    ("layer_norm1.", "norm1."), ("layer_norm2.", "norm2."),
    ("self_attn.q_proj.", "attn.q_proj."), ("self_attn.k_proj.", "attn.k_proj."),
    ("self_attn.v_proj.", "attn.v_proj."), ("self_attn.inner_attn_ln.", "attn.inner_attn_ln."),
    ("self_attn.out_proj.", "attn.proj."),
    ("mlp.fc1.", "mlp.w1."), ("mlp.fc2.", "mlp.w2."), ("mlp.fc3.", "mlp.w3."), ("mlp.ffn_ln.", "mlp.ffn_ln."),
)


def _from_hf_evaclip(sd: dict, out: Canonical) -> None:
    """EVA-CLIP's HF port (`modeling_evaclip.py`): CLIP-style names, swiglu fc1 = gate (SiLU), fc2 = linear,
    fc3 = output. Not verified against LLM2CLIP's `pytorch_model.bin`; the `.pt` is the ground truth."""
    logger.warning("mapping an HF EVA-CLIP (modeling_evaclip) layout; its names follow the EVA-CLIP HF port and are "
                   "not verified against LLM2CLIP's file - prefer the EVA-CLIP .pt checkpoint")
    for key, value in sd.items():
        if _is_rope_buffer(key):
            out.rope_tables[key] = value
        elif key == "embeddings.class_embedding":
            out.tensors["cls_token"] = value.reshape(1, 1, -1)
        elif key == "embeddings.position_embedding.weight":
            out.tensors["pos_embed"] = value.unsqueeze(0)
        elif key.startswith("embeddings.patch_embedding."):
            out.tensors["patch_embed.proj." + key[len("embeddings.patch_embedding."):]] = value
        elif key == "embeddings.position_ids":
            out.ignored.append(key)
        elif key.startswith("post_layernorm."):
            out.tensors["norm." + key[len("post_layernorm."):]] = value
        elif key.startswith("encoder.layers."):
            idx, rest = key[len("encoder.layers."):].split(".", 1)
            for src, dst in _HF_EVACLIP_BLOCK:
                if rest.startswith(src):
                    out.tensors[f"blocks.{idx}.{dst}{rest[len(src):]}"] = value
                    break
            else:
                out.tensors[key] = value  # unrecognised: reported as unexpected by the strict load
        else:
            out.tensors[key] = value


def _from_hf_clip(sd: dict, out: Canonical) -> None:
    for key, value in sd.items():
        if key == "embeddings.position_ids":
            out.ignored.append(key)  # a buffer older transformers saved
        else:
            out.tensors[key] = value


_OPENAI_BLOCK = (("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("attn.out_proj.", "self_attn.out_proj."),
                 ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."))


def _from_openai_clip(sd: dict, out: Canonical) -> None:
    """OpenAI / open_clip / EVA-CLIP `VisionTransformer` names → transformers CLIP names."""
    for key, value in sd.items():
        if key == "conv1.weight":
            out.tensors["embeddings.patch_embedding.weight"] = value
        elif key == "class_embedding":
            out.tensors["embeddings.class_embedding"] = value
        elif key == "positional_embedding":
            out.tensors["embeddings.position_embedding.weight"] = value
        elif key.startswith("ln_pre."):
            out.tensors["pre_layrnorm." + key[len("ln_pre."):]] = value
        elif key.startswith("ln_post."):
            out.tensors["post_layernorm." + key[len("ln_post."):]] = value
        elif key == "proj":
            out.ignored.append(key)
        elif key.startswith("transformer.resblocks."):
            idx, rest = key[len("transformer.resblocks."):].split(".", 1)
            base = f"encoder.layers.{idx}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if rest.endswith("weight") else "bias"
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out.tensors[f"{base}self_attn.{name}.{kind}"] = chunk
                continue
            for src, dst in _OPENAI_BLOCK:
                if rest.startswith(src):
                    out.tensors[base + dst + rest[len(src):]] = value
                    break
            else:
                out.tensors[key] = value
        else:
            out.tensors[key] = value


# ---------------------------------------------------------------------------------------------- shapes
def infer_structure(c: Canonical) -> dict[str, Any]:
    """Sizes readable from canonical weights (num_heads only when RoPE tables reveal the head dim)."""
    t = c.tensors
    try:
        if c.arch == "eva02":
            w = t["patch_embed.proj.weight"]
            tokens = t["pos_embed"].shape[1]
            depth = 1 + max(int(m.group(1)) for k in t if (m := _RE_BLOCK.match(k)))
            info = dict(arch="eva02", hidden_size=w.shape[0], patch_size=w.shape[-1],
                        intermediate_size=t["blocks.0.mlp.w1.weight"].shape[0], num_layers=depth,
                        qkv_bias="blocks.0.attn.q_proj.bias" in t)
            cos = next((v for k, v in c.rope_tables.items() if k.endswith("freqs_cos")), None)
            if cos is not None and cos.ndim == 2 and cos.shape[-1] and w.shape[0] % cos.shape[-1] == 0:
                info["num_heads"] = w.shape[0] // cos.shape[-1]
        else:
            w = t["embeddings.patch_embedding.weight"]
            tokens = t["embeddings.position_embedding.weight"].shape[0]
            depth = 1 + max(int(k.split(".")[2]) for k in t if k.startswith("encoder.layers."))
            info = dict(arch="clip", hidden_size=w.shape[0], patch_size=w.shape[-1],
                        intermediate_size=t["encoder.layers.0.mlp.fc1.weight"].shape[0], num_layers=depth)
    except (KeyError, ValueError, IndexError) as exc:
        raise VisionCheckpointError(f"cannot read the tower's sizes from the checkpoint ({exc!r} missing)") from exc
    grid = int(round((tokens - 1) ** 0.5))
    if grid * grid != tokens - 1:
        raise VisionCheckpointError(f"position embedding has {tokens} rows, not 1 + a square grid")
    info["image_size"] = grid * info["patch_size"]
    return info
