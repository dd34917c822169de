"""Save a model as a self-describing directory and load any such directory in one call.

What is loaded is decided by the manifest's `contents`, never by folder names: projector (always), tokenizer
(always), peft adapter (LoRA/QLoRA), full LLM weights (full fine-tune or merge), tower weights (trained or
without a hub source).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from projector import load_projector, save_projector

from .builder import image_processor_for, load_tokenizer, load_tower
from .config import MLLMConfig
from .containment import describe_reference
from .errors import UserError
from .llm import base_causal_lm, default_device, load_adapter, load_llm, load_merged_llm, resolve_dtype
from .modeling import MLLM, image_tokens_per_image
from .processor import MLLMProcessor

logger = logging.getLogger(__name__)


def _is_peft(llm) -> bool:
    return hasattr(llm, "peft_config")


def save_pretrained(
    model: MLLM,
    processor: MLLMProcessor,
    directory: str | Path,
    *,
    save_llm: bool | None = None,
    save_tower: bool | None = None,
    extra: dict | None = None,
) -> Path:
    """Write manifest, projector, tokenizer and, as needed, adapter, LLM weights and tower weights.

    `save_llm=None` saves full LLM weights only when the LLM itself was trained (no adapter); `save_tower=None`
    saves the tower when any of it was trained or it has no checkpoint source to reload it from.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    contents = {"projector": "projector", "tokenizer": "tokenizer"}
    save_projector(model.projector, directory / "projector")
    processor.tokenizer.save_pretrained(directory / "tokenizer")
    llm = model.llm
    if _is_peft(llm):
        llm.save_pretrained(directory / "adapter")
        contents["adapter"] = "adapter"
    if save_llm is None:
        save_llm = not _is_peft(llm) and any(p.requires_grad for p in llm.parameters())
    if save_llm:
        if getattr(llm, "is_loaded_in_4bit", False) or getattr(llm, "is_loaded_in_8bit", False):
            raise ValueError("refusing to save quantised LLM weights as the model: merge into a bf16 copy instead")
        base_causal_lm(llm).save_pretrained(directory / "llm", safe_serialization=True)
        contents["llm"] = "llm"
    if save_tower is None:
        save_tower = model.vision_tower.trainable or config.tower.checkpoint is None
    if save_tower:
        model.vision_tower.save_pretrained(directory / "vision_tower")
        contents["vision_tower"] = "vision_tower"
    config.contents = contents
    if extra:
        config.extra = {**config.extra, **extra}
    config.save(directory)
    return directory


def external_references(directory: str | Path, manifest: MLLMConfig) -> dict[str, str]:
    """The parts loaded from outside the checkpoint (the base LLM, the base tower), described for people."""
    refs = {}
    if "llm" not in manifest.contents:
        refs["LLM"] = describe_reference(manifest.resolve_path(directory, manifest.llm), manifest.llm_revision)
    if "vision_tower" not in manifest.contents:
        refs["tower"] = describe_reference(manifest.base_tower(directory).checkpoint, manifest.tower.revision)
    return refs


def log_external_references(directory: str | Path, manifest: MLLMConfig) -> None:
    for what, ref in external_references(directory, manifest).items():
        logger.info("checkpoint %s: base %s from %s", directory, what, ref)


def _resolve_quantization(requested: str | None, manifest: MLLMConfig, has_full_llm: bool) -> str | None:
    if requested != "auto":
        return None if requested in (None, "none") else requested
    if has_full_llm or manifest.quantization is None:
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        logger.warning("checkpoint was trained with a %s LLM but bitsandbytes is missing: loading unquantised",
                       manifest.quantization)
        return None
    return manifest.quantization


def load_model(
    directory: str | Path,
    *,
    quantization: str | None = "auto",
    dtype: str | torch.dtype | None = None,
    device_map=None,
    device: str | torch.device | None = None,
    trainable: bool = False,
    merge_on_load: bool = False,
) -> tuple[MLLM, MLLMProcessor]:
    """Load any checkpoint directory this package wrote (manifest `format_version` <= 1).

    Returns `(model, processor)`; `model.spec` is the checkpoint's `ModelSpec` and `model.config` its manifest.

    `quantization="auto"` loads the LLM as it was trained (a QLoRA adapter on its 4-bit base) when
    bitsandbytes is available; `None`/"none", "4bit" or "8bit" override. Everything goes to `device`, by
    default CUDA when there is one, else the CPU; `device_map` spreads the LLM instead (tower and projector
    follow its input embeddings). Compute is bf16 on CUDA, fp32 on the CPU unless `dtype` says otherwise; an
    adapter is served in that dtype (fp32 when `trainable`).

    `merge_on_load=True` folds a LoRA/QLoRA adapter into an unquantised copy of its base in the compute dtype,
    as `merge` does (a QLoRA adapter into the dequantised NF4 weights it was trained against): more memory
    (a 7B LLM: ~13.5 GB in bf16 instead of ~4 GB), faster batched generation. A checkpoint with full LLM
    weights is already merged and loads unquantised.
    """
    directory = Path(directory)
    manifest = MLLMConfig.load(directory)  # every listed part checked: present, inside the directory
    parts = manifest.parts(directory)
    has_full_llm = "llm" in parts
    llm_source = str(parts["llm"]) if has_full_llm else manifest.resolve_path(directory, manifest.llm)
    log_external_references(directory, manifest)
    tokenizer = load_tokenizer(parts["tokenizer"])  # first: cheap, and a refused tokenizer costs no LLM load
    quant = _resolve_quantization(quantization, manifest, has_full_llm)
    merge = merge_on_load and "adapter" in parts
    if merge and (trainable or quantization not in ("auto", None, "none")):
        raise UserError(f"merge_on_load serves an unquantised, frozen merge of the adapter: it cannot be combined "
                        f"with quantization={quantization!r} or trainable=True")
    if merge_on_load and not merge:
        logger.info("%s has no adapter (its LLM weights are already full): nothing to merge on load", directory)
    if device is None and device_map is None:
        device = default_device()
    if device is not None and device_map is None:
        device_map = {"": str(device)}
    compute_dtype = resolve_dtype(dtype, device)
    revision = None if has_full_llm else manifest.llm_revision
    adapter_dir = str(parts["adapter"]) if "adapter" in parts else None
    if merge:
        base = "dequantized" if quant == "4bit" else "original"
        llm = load_merged_llm(llm_source, adapter_dir, base=base, dtype=compute_dtype, device_map=device_map,
                              revision=revision)
        manifest.extra = {**manifest.extra, "merged_on_load": base}
    else:
        llm = load_llm(llm_source, quantization=quant, dtype=compute_dtype, device_map=device_map, revision=revision)
        if adapter_dir is not None:
            llm = load_adapter(llm, adapter_dir, trainable=trainable, dtype=compute_dtype)
    tower = load_tower(manifest.base_tower(directory), directory=parts.get("vision_tower"), dtype=compute_dtype)
    d_llm = llm.get_input_embeddings().weight.shape[1]
    proj = load_projector(
        parts["projector"],
        expected_in_features=tower.hidden_size,
        expected_out_features=d_llm,
        expected_tower=manifest.tower.name,
        dtype=compute_dtype,
    )
    processor = MLLMProcessor(
        tokenizer, image_processor_for(tower, manifest.image_aspect_ratio), image_tokens_per_image(tower, proj), manifest.image_token,
        template=manifest.template, model_max_length=manifest.model_max_length,
    )
    if processor.image_token_id != manifest.image_token_id:
        raise ValueError(
            f"tokenizer in {directory} maps {manifest.image_token!r} to {processor.image_token_id}, "
            f"but the manifest says {manifest.image_token_id}"
        )
    model = MLLM(manifest, llm, tower, proj)
    model.place_vision_modules()
    if not trainable:
        model.eval()
        model.requires_grad_(False)
    return model, processor


def copy_checkpoint_parts(source: str | Path, target: str | Path, parts: list[str]) -> None:
    """Copy listed sub-directories (e.g. projector, tokenizer) between checkpoint directories."""
    for part in parts:
        src = Path(source) / part
        if src.exists():
            shutil.copytree(src, Path(target) / part, dirs_exist_ok=True)
