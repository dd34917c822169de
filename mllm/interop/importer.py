"""`import_checkpoint`: recognise a foreign checkpoint's format by its config, read it, write our checkpoint."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from . import llava, llava_hf
from .imported import ImportedModel, write_checkpoint
from .output import check_output_dir
from .source import InteropError, SourceDir

logger = logging.getLogger(__name__)

READERS = {llava.FORMAT: llava, llava_hf.FORMAT: llava_hf}


def detect_format(source: SourceDir) -> str:
    """The format whose config fields `source` has; an `InteropError` listing what was seen otherwise."""
    found = [name for name, reader in READERS.items() if reader.detect(source.config)]
    if len(found) == 1:
        return found[0]
    cfg = source.config
    seen = f"architectures={cfg.get('architectures')}, model_type={cfg.get('model_type')!r}"
    if found:
        raise InteropError(f"{source.origin}: config.json matches several formats ({', '.join(found)}); "
                           f"pass --format")
    if cfg.get("format") == "llm2clip-llava":
        raise InteropError(f"{source.origin} is already an llm2clip-llava checkpoint: nothing to import")
    raise InteropError(f"{source.origin}: unknown checkpoint layout ({seen}): expected LLaVA's own format "
                       f"(LlavaLlamaForCausalLM / LlavaMistralForCausalLM, mm_vision_tower in config.json) or "
                       f"llava-hf (LlavaForConditionalGeneration)")


def read_checkpoint(source: str | Path, *, format: str = "auto", dtype: torch.dtype | None = None,
                    **options) -> ImportedModel:
    """Read and check a foreign checkpoint into our parts, in memory (nothing is written)."""
    src = SourceDir.open(source)
    name = detect_format(src) if format == "auto" else format
    if name not in READERS:
        raise InteropError(f"unknown format {format!r}; choose auto, {', '.join(READERS)}")
    if format != "auto" and not READERS[name].detect(src.config):
        raise InteropError(f"{src.origin}: config.json is not {name} format")
    return READERS[name].read(src, dtype=dtype, **options)


def import_checkpoint(source: str | Path, output: str | Path, *, format: str = "auto",
                      dtype: torch.dtype | None = None, **options) -> tuple[Path, ImportedModel]:
    """Convert `source` (directory or hub id) into our checkpoint directory `output`.

    options: `tower` (where the vision tower comes from, overriding the checkpoint), `template`,
    `image_aspect_ratio`, `model_base` (the LLM under a LoRA or projector-only LLaVA checkpoint).
    """
    check_output_dir(output)
    model = read_checkpoint(source, format=format, dtype=dtype, **options)
    return write_checkpoint(model, output), model
