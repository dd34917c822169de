"""`finetune --init_from CKPT`: start stage 2 from a whole checkpoint (e.g. an imported LLaVA-1.5) instead of a
base LLM plus a stage-1 projector.

The checkpoint decides the model: its LLM weights, tokenizer, tower (and its layer/feature selection),
projector, template and image mode replace those fields of the configuration before anything loads, so
the run directory's train_config.json records what was actually trained. Training options are untouched.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..config import MLLMConfig
from ..errors import UserError

logger = logging.getLogger(__name__)


def apply_init_from(config):
    """`config` with its model fields taken from the checkpoint `config.init_from` (unchanged without one)."""
    if not config.init_from:
        return config
    directory = Path(config.init_from)
    if config.stage != "finetune":
        raise UserError("--init_from starts stage 2 (finetune) from a checkpoint; stage 1 trains a new projector")
    manifest = MLLMConfig.load(directory)
    contents = manifest.contents
    if "adapter" in contents:
        raise UserError(f"--init_from {directory}: the checkpoint is a LoRA adapter on {manifest.llm}; merge it "
                        f"into full weights first (llm2clip-llava merge {directory} MERGED), then --init_from MERGED")
    tower = manifest.base_tower(directory)
    own_tower = "vision_tower" in contents
    llm = directory / contents["llm"] if "llm" in contents else manifest.resolve_path(directory, manifest.llm)
    changes = {
        "llm": str(llm), "tokenizer": str(directory / contents["tokenizer"]),
        "tower": None if own_tower else tower.config,
        "tower_checkpoint": str(directory / contents["vision_tower"]) if own_tower else tower.checkpoint,
        "select_layer": tower.select_layer, "select_feature": tower.select_feature,
        "projector_type": manifest.projector_type, "pretrained_projector": str(directory / contents["projector"]),
        "template": manifest.template, "image_aspect_ratio": manifest.image_aspect_ratio,
    }
    replaced = {k: v for k, v in changes.items() if getattr(config, k) != v}
    logger.info("--init_from %s: model from the checkpoint (%s)", directory,
                ", ".join(f"{k}={v}" for k, v in replaced.items()) or "nothing differs from the configuration")
    return dataclasses.replace(config, **changes)
