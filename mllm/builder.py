"""Assemble a fresh model from its `ModelSpec`: LLM (any precision, optionally LoRA) + vision tower + projector."""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from projector import build_projector, load_projector
from vision_tower import load_vision_tower

from .config import MLLMConfig, ModelSpec, TowerSpec
from .hub import load_tokenizer
from .llm import apply_lora, enable_gradient_checkpointing, load_llm, resolve_dtype
from .modeling import MLLM, image_tokens_per_image
from .processor import MLLMProcessor
from .validation import validate_spec

logger = logging.getLogger(__name__)


def tower_name(tower) -> str | None:
    return getattr(tower.config, "name", None)


def load_tower(spec: TowerSpec, *, directory: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """The tower a spec names; `directory` overrides the source (a tower saved inside a checkpoint)."""
    return load_vision_tower(
        str(directory) if directory is not None else spec.checkpoint,
        config=spec.config,
        select_layer=spec.select_layer,
        select_feature=spec.select_feature,
        dtype=dtype,
        revision=None if directory is not None else spec.revision,
    )


def image_processor_for(tower, image_aspect_ratio: str):
    """The tower's own image processor (size, mean, std) with the requested `image_aspect_ratio` geometry."""
    return tower.image_processor.with_image_aspect_ratio(image_aspect_ratio)


def configure_trainable(
    model: MLLM,
    *,
    train_projector: bool = True,
    train_llm: bool = False,
    unfreeze_tower_blocks: int = 0,
) -> None:
    """Set requires_grad per part. LoRA parameters (if any) stay trainable; with `train_llm` the whole LLM is."""
    model.projector.requires_grad_(train_projector)
    if train_llm:
        model.llm.requires_grad_(True)
    else:
        for name, param in model.llm.named_parameters():
            param.requires_grad_("lora_" in name)
    model.vision_tower.freeze()
    if unfreeze_tower_blocks:
        model.vision_tower.unfreeze(last_k_blocks=unfreeze_tower_blocks)


def build_model(
    spec: ModelSpec | str | Path,
    *,
    tokenizer=None,
    projector_path: str | Path | None = None,
    dtype: str | torch.dtype | None = None,
    device_map=None,
    train_llm: bool = False,
    train_projector: bool = True,
    unfreeze_tower_blocks: int = 0,
    gradient_checkpointing: bool = False,
    quant_storage: torch.dtype | None = None,
    **spec_fields,
) -> tuple[MLLM, MLLMProcessor]:
    """Build tower → projector → LLM for training or a first evaluation.

    `spec` is the `ModelSpec` to build (checked by `validate_spec` before any weights load). Keyword form:
    `build_model("lmsys/vicuna-7b-v1.5", tower="llm2clip-eva02-l-14-336", lora=LoraSpec(...))` builds
    `ModelSpec(llm, **spec_fields)`. The other arguments say how, not what: `tokenizer` replaces the LLM's own,
    `projector_path` initialises the projector from a stage-1 artifact (dims and tower are checked), and
    `train_*`/`unfreeze_tower_blocks` choose what gets gradients. The spec's `llm_revision` and
    `tower.revision` pin hub branches/tags/commits (the LLM's also for its tokenizer); both are recorded in the
    manifest and used again when it is loaded.
    """
    if isinstance(spec, ModelSpec):
        if spec_fields:
            raise TypeError(f"build_model(spec, ...) takes the model description from the spec; got {sorted(spec_fields)}")
        spec = spec.spec if isinstance(spec, MLLMConfig) else copy.deepcopy(spec)
    else:
        spec = ModelSpec(llm=str(spec), **spec_fields)
    validate_spec(spec, train_llm=train_llm, unfreeze_tower_blocks=unfreeze_tower_blocks)
    compute_dtype = resolve_dtype(dtype)
    llm_model = load_llm(spec.llm, quantization=spec.quantization, dtype=compute_dtype, device_map=device_map,
                         quant_storage=quant_storage, revision=spec.llm_revision)
    vision = load_tower(spec.tower, dtype=compute_dtype)
    spec.tower.name = spec.tower.name or tower_name(vision)
    d_llm = llm_model.get_input_embeddings().embedding_dim  # also under ZeRO-3, whose weights are partitioned at load
    if projector_path is not None:
        proj = load_projector(projector_path, expected_in_features=vision.hidden_size, expected_out_features=d_llm,
                              expected_tower=spec.tower.name)
        if proj.config.projector_type != spec.projector_type:
            logger.warning("projector_type %r replaced by the stage-1 projector's type %r (%s)", spec.projector_type,
                           proj.config.projector_type, projector_path)
        spec.projector_type = proj.config.projector_type
    else:
        proj = build_projector(spec.projector_type, vision.hidden_size, d_llm, tower=spec.tower.name)
    proj.to(compute_dtype)
    if gradient_checkpointing:
        enable_gradient_checkpointing(llm_model)
    if spec.lora is not None:
        llm_model = apply_lora(llm_model, spec.lora)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(spec.llm, revision=spec.llm_revision)
    processor = MLLMProcessor(tokenizer, image_processor_for(vision, spec.image_aspect_ratio),
                              image_tokens_per_image(vision, proj), spec.image_token, template=spec.template,
                              model_max_length=spec.model_max_length)
    config = MLLMConfig.from_spec(spec, image_token_id=processor.image_token_id)
    model = MLLM(config, llm_model, vision, proj)
    model.place_vision_modules()
    configure_trainable(model, train_projector=train_projector, train_llm=train_llm, unfreeze_tower_blocks=unfreeze_tower_blocks)
    return model, processor
