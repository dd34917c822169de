"""From foreign weights to our parts, checked: the LLM, the tower and the projector built and loaded in memory.

Every importer maps its names onto ours and hands the tensors to these builders, which load them strictly: a
missing, unexpected or mis-shaped tensor is an `InteropError` naming it, raised before anything is written.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from projector import Projector
from projector.builder import ProjectorConfig, projector_from_config
from vision_tower import VisionCheckpointError, build_vision_tower
from vision_tower.checkpoint import canonicalize
from vision_tower.loader import match_preset

from .source import InteropError, describe_keys

logger = logging.getLogger(__name__)

# buffers that older transformers versions saved with Llama-family weights and that are recomputed today
_STALE_BUFFERS = ("rotary_emb.inv_freq",)


def cast_floats(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return tensors
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}


def weights_dtype(tensors: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype most floating-point tensors have (what the source was saved in)."""
    counts: dict[torch.dtype, int] = {}
    for value in tensors.values():
        if value.is_floating_point():
            counts[value.dtype] = counts.get(value.dtype, 0) + value.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def build_llm(text_config, state: dict[str, torch.Tensor], *, what: str) -> nn.Module:
    """A transformers causal LM of `text_config` holding exactly `state` (causal-LM names: model.*, lm_head.*).

    Built on the meta device and filled by assignment (no second copy of the weights): ready to
    `save_pretrained`, not to run (its non-persistent RoPE buffers stay on the meta device).
    """
    from transformers import AutoModelForCausalLM

    state = {k: v for k, v in state.items() if not k.endswith(_STALE_BUFFERS)}
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(text_config)
    except ValueError as exc:  # a model type transformers does not know
        raise InteropError(f"{what}: transformers cannot build its language model ({exc})") from exc
    expected = model.state_dict()
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    missing = set(expected) - set(state) - ({"lm_head.weight"} if tied else set())
    unexpected = set(state) - set(expected)
    shapes = [f"{k} {tuple(v.shape)} (config: {tuple(expected[k].shape)})"
              for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    problems = [f"{len(keys)} {label}: {describe_keys(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("with another shape", shapes)) if keys]
    if problems:
        raise InteropError(f"{what}: the language-model weights do not fit its config "
                           f"({text_config.model_type}, hidden {text_config.hidden_size}, vocab "
                           f"{text_config.vocab_size}): " + "; ".join(problems))
    dtype = weights_dtype(state)
    model.load_state_dict(state, strict=False, assign=True)
    if tied and "lm_head.weight" not in state:
        model.tie_weights()
    model.config.dtype = dtype
    return model.eval()


def build_projector(projector_type: str, state: dict[str, torch.Tensor], in_features: int, out_features: int, *,
                    tower_name: str | None, what: str, source_name=lambda key: key) -> Projector:
    """Our projector of `projector_type` holding `state` (our names: layers.0.weight, layers.2.weight, ...);
    `source_name` maps our names back to the checkpoint's for error messages."""
    try:
        projector = projector_from_config(ProjectorConfig(projector_type, in_features, out_features, tower_name))
    except ValueError as exc:
        raise InteropError(f"{what}: {exc}") from exc
    expected = projector.state_dict()
    missing = {source_name(k) for k in set(expected) - set(state)}
    unexpected = {source_name(k) for k in set(state) - set(expected)}
    shapes = [f"{source_name(k)} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
              for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(keys)} {label}: {describe_keys(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("with another shape", shapes)) if keys]
        raise InteropError(f"{what}: the projector weights do not fit a {projector_type} projector from the "
                           f"tower's {in_features} to the LLM's {out_features} features: " + "; ".join(parts))
    projector.to(weights_dtype(state)).load_state_dict(state, strict=True)
    return projector.eval()


def build_tower(tensors: dict[str, torch.Tensor], config, *, select_layer: int, select_feature: str, what: str,
                name: str | None = None):
    """A tower of `config` (None: the preset its shapes match), named `name`, loaded from `tensors` in any
    known layout."""
    try:
        canonical = canonicalize(tensors)
        config = config if config is not None else match_preset(canonical, origin=what)
    except VisionCheckpointError as exc:
        raise InteropError(f"{what}: the vision tower's weights: {exc}") from exc
    if config.arch != canonical.arch:
        raise InteropError(f"{what}: the tower weights are a {canonical.arch} tower but its config says {config.arch}")
    check_selection(select_layer, select_feature, config.num_layers, what)
    if name is not None:
        config = config.replace(name=name)
    tower = build_vision_tower(config, select_layer=select_layer, select_feature=select_feature)
    try:
        tower.to(weights_dtype(canonical.tensors)).load_canonical_state_dict(canonical.tensors)
    except VisionCheckpointError as exc:
        raise InteropError(f"{what}: the vision tower's weights do not fit its config: {exc}") from exc
    return tower


def check_selection(select_layer, select_feature: str, num_layers: int, what: str) -> None:
    """LLaVA's feature selection must name a hidden state the tower has and a known CLS policy."""
    if isinstance(select_layer, bool) or not isinstance(select_layer, int) or not -num_layers - 1 <= select_layer <= num_layers:
        raise InteropError(f"{what}: vision feature layer {select_layer!r} is not a single hidden-state index of a "
                           f"{num_layers}-layer tower")
    if select_feature not in ("patch", "cls_patch"):
        raise InteropError(f"{what}: vision feature selection {select_feature!r} is not supported (patch or cls_patch)")
