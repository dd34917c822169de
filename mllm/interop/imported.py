"""What every importer produces (`ImportedModel`: checked parts in memory) and how it becomes our checkpoint.

Readers (`llava.read`, `llava_hf.read`) build and load every part before returning, so a bad source fails
before `write_checkpoint` creates anything; the directory appears only once it is complete.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from projector import Projector, save_projector
from vision_tower.config import IMAGE_ASPECT_RATIOS

from ..config import LoraSpec, MLLMConfig, TowerSpec
from ..templates import get_template
from ..tokenization import add_image_token
from .output import staged_output
from .source import InteropError

logger = logging.getLogger(__name__)



@dataclass
class ImportedModel:
    """A foreign checkpoint as our parts. Exactly one of `llm` (full weights) or `llm_base` (+ `adapter`) is set."""

    source: str
    source_format: str
    tokenizer: Any
    projector: Projector
    tower_spec: TowerSpec
    template: str
    image_aspect_ratio: str
    model_max_length: int
    llm: nn.Module | None = None  # full LLM weights, written to llm/
    llm_base: str | None = None  # the base LLM (hub id or path) an adapter applies to
    adapter: tuple[LoraSpec, dict, dict] | None = None  # (spec, peft config dict, adapter tensors in peft names)
    tower: nn.Module | None = None  # tower weights that came with the model, written to vision_tower/
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if (self.llm is None) == (self.llm_base is None):
            raise ValueError("ImportedModel needs exactly one of llm and llm_base")
        if self.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise InteropError(f"image aspect ratio {self.image_aspect_ratio!r} is not one of {IMAGE_ASPECT_RATIOS}")
        try:
            get_template(self.template).check(self.tokenizer)
        except ValueError as exc:
            raise InteropError(f"template {self.template!r}: {exc}") from exc
        self.image_token_id = add_image_token(self.tokenizer)

    def manifest(self, contents: dict) -> MLLMConfig:
        return MLLMConfig(
            llm="llm" if self.llm is not None else self.llm_base,
            tower=self.tower_spec,
            projector_type=self.projector.config.projector_type,
            template=self.template,
            image_aspect_ratio=self.image_aspect_ratio,
            image_token_id=self.image_token_id,
            model_max_length=self.model_max_length,
            lora=self.adapter[0] if self.adapter else None,
            contents=contents,
            extra={"imported_from": self.source, "source_format": self.source_format},
        )

    def summary(self) -> list[str]:
        spec = self.tower_spec
        lines = [f"format: {self.source_format}"]
        if self.llm is not None:
            cfg = self.llm.config
            lines.append(f"LLM: {cfg.model_type}, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
                         f"vocab {cfg.vocab_size}, {str(cfg.dtype).replace('torch.', '')}")
        else:
            lines.append(f"LLM: base {self.llm_base} + LoRA adapter (r={self.adapter[0].r}, alpha={self.adapter[0].alpha})"
                         if self.adapter else f"LLM: base {self.llm_base} (projector only)")
        where = "weights included" if self.tower is not None else f"loaded from {spec.checkpoint}"
        lines.append(f"vision tower: {spec.name} ({where}); feature layer {spec.select_layer}, {spec.select_feature}")
        lines.append(f"projector: {self.projector.config.projector_type}; template: {self.template}; "
                     f"images: {self.image_aspect_ratio}; max length {self.model_max_length}")
        return lines + self.notes


def load_tokenizer_from(source, what: str, config=None):
    """The tokenizer saved in `source` (a directory or hub id), or an `InteropError` saying there is none.

    `config` (the LLM's) spares transformers reading a config.json whose model type it does not know (LLaVA's).
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source), trust_remote_code=False,
                                             **({"config": config} if config is not None else {}))
    except (OSError, ValueError, TypeError) as exc:
        raise InteropError(f"{what}: no usable tokenizer ({str(exc).splitlines()[0]})") from exc


def write_checkpoint(model: ImportedModel, out: str | Path) -> Path:
    """Write `model` as our checkpoint directory `out` (which must not exist yet or be empty)."""
    with staged_output(out) as staging:
        contents = {"projector": "projector", "tokenizer": "tokenizer"}
        save_projector(model.projector, staging / "projector")
        model.tokenizer.save_pretrained(str(staging / "tokenizer"))
        if model.llm is not None:
            model.llm.save_pretrained(str(staging / "llm"), safe_serialization=True)
            contents["llm"] = "llm"
        if model.adapter is not None:
            _write_adapter(model.adapter, staging / "adapter")
            contents["adapter"] = "adapter"
        if model.tower is not None:
            model.tower.save_pretrained(staging / "vision_tower")
            contents["vision_tower"] = "vision_tower"
        model.manifest(contents).save(staging)
    return Path(out)


def _write_adapter(adapter, directory: Path) -> None:
    """A peft LoRA adapter directory (adapter_config.json + adapter_model.safetensors)."""
    import json

    from safetensors.torch import save_file

    _, peft_config, tensors = adapter
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps(peft_config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "adapter_model.safetensors"),
              metadata={"format": "pt"})
