"""Assemble a fresh model for training: LLM (any precision, optionally LoRA) + vision tower + projector."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from projector import build_projector, load_projector

from .config import LoraSpec, MLLMConfig, TowerSpec
from .hub import load_tokenizer
from .llm import apply_lora, enable_gradient_checkpointing, load_llm, resolve_dtype
from .modeling import MLLM, image_tokens_per_image
from .processor import MLLMProcessor

logger = logging.getLogger(__name__)


def tower_name(tower) -> str | None:
    return getattr(tower.config, "name", None)


def load_tower(spec: TowerSpec, *, directory: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """The tower a spec names; `directory` overrides the source (a tower saved inside a checkpoint)."""
    from vision_tower import load_vision_tower

    return load_vision_tower(
        str(directory) if directory is not None else spec.checkpoint,
        config=spec.config,
        select_layer=spec.select_layer,
        select_feature=spec.select_feature,
        dtype=dtype,
        revision=None if directory is not None else spec.revision,
    )


def image_processor_for(tower, mode: str):
    """The tower's own image processor (size, mean, std) in the requested preprocessing mode."""
    return tower.image_processor.with_mode(mode)


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
    llm: str,
    *,
    tower: TowerSpec | str | None = None,
    tokenizer=None,
    projector_type: str = "mlp2x_gelu",
    projector_path: str | Path | None = None,
    template: str = "vicuna_v1",
    image_aspect_ratio: str = "pad",
    model_max_length: int = 2048,
    quantization: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map=None,
    lora: LoraSpec | None = None,
    train_llm: bool = False,
    train_projector: bool = True,
    unfreeze_tower_blocks: int = 0,
    gradient_checkpointing: bool = False,
    quant_storage: torch.dtype | None = None,
    llm_revision: str | None = None,
) -> tuple[MLLM, MLLMProcessor]:
    """Build tower → projector → LLM for training or a first evaluation.

    `llm` is a hub id or local path (`llm_revision` pins its hub branch/tag/commit, for the LLM and its
    tokenizer); `tower` a `TowerSpec` (its `revision` pins the tower's) or preset name (default: LLM2CLIP
    EVA02-L-14-336); `projector_path` initialises the projector from a stage-1 artifact (dims and tower are
    checked). Both revisions are recorded in the manifest and used again when it is loaded.
    """
    if isinstance(tower, str) or tower is None:
        tower = TowerSpec(config=tower or "llm2clip-eva02-l-14-336", name=tower or "llm2clip-eva02-l-14-336")
    compute_dtype = resolve_dtype(dtype)
    llm_model = load_llm(llm, quantization=quantization, dtype=compute_dtype, device_map=device_map,
                         quant_storage=quant_storage, revision=llm_revision)
    vision = load_tower(tower, dtype=compute_dtype)
    tower.name = tower.name or tower_name(vision)
    d_llm = llm_model.get_input_embeddings().embedding_dim  # also under ZeRO-3, whose weights are partitioned at load
    if projector_path is not None:
        proj = load_projector(
            projector_path, expected_in_features=vision.hidden_size, expected_out_features=d_llm, expected_tower=tower.name
        )
    else:
        proj = build_projector(projector_type, vision.hidden_size, d_llm, tower=tower.name)
    proj.to(compute_dtype)
    if gradient_checkpointing:
        enable_gradient_checkpointing(llm_model)
    if lora is not None:
        llm_model = apply_lora(llm_model, lora)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(llm, revision=llm_revision)
    processor = MLLMProcessor(tokenizer, image_processor_for(vision, image_aspect_ratio), image_tokens_per_image(vision, proj),
                              template=template, model_max_length=model_max_length)
    config = MLLMConfig(
        llm=str(llm),
        llm_revision=llm_revision,
        tower=tower,
        projector_type=proj.config.projector_type,
        template=template,
        image_aspect_ratio=image_aspect_ratio,
        image_token_id=processor.image_token_id,
        model_max_length=model_max_length,
        quantization=quantization,
        lora=lora,
    )
    model = MLLM(config, llm_model, vision, proj)
    model.place_vision_modules()
    configure_trainable(model, train_projector=train_projector, train_llm=train_llm, unfreeze_tower_blocks=unfreeze_tower_blocks)
    return model, processor
