"""Which distributed set-ups are supported, decided before any weights are loaded.

accelerate does the distribution (DDP, DeepSpeed, FSDP, multi-node); this module refuses combinations that
are known to fail late and obscurely (LLaVA issue #1692: QLoRA + ZeRO-3 crashes on meta tensors) and picks
the settings a combination needs (QLoRA + FSDP: `bnb_4bit_quant_storage` equal to the compute dtype).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


class UnsupportedSetupError(ValueError):
    """A training mode that cannot work with the chosen distributed engine; the message says what to use."""


@dataclass
class SetupPlan:
    engine: str  # none | ddp | deepspeed | fsdp
    zero_stage: int | None
    quantization: str | None
    quant_storage: torch.dtype | None
    device_map: dict | None


def detect_engine() -> tuple[str, int | None]:
    """Read what `accelerate launch` put in the environment (before the Accelerator exists)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        return "deepspeed", int(stage) if stage and stage.isdigit() else None
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp", None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "ddp", None
    return "none", None


def plan_setup(mode: str, compute_dtype: torch.dtype, engine: str | None = None, zero_stage: int | None = None) -> SetupPlan:
    if engine is None:
        engine, zero_stage = detect_engine()
    quantization = "4bit" if mode == "qlora" else None
    if quantization and engine == "deepspeed" and zero_stage == 3:
        raise UnsupportedSetupError(
            "QLoRA (4-bit LLM) cannot be sharded by DeepSpeed ZeRO-3 (bitsandbytes weights are not ZeRO-3 "
            "partitionable). Use ZeRO-2 (mllm/accelerate_configs/deepspeed_zero2.yaml), FSDP "
            "(fsdp_qlora.yaml), plain DDP, or mode=lora/full with ZeRO-3."
        )
    if quantization and not torch.cuda.is_available() and engine in ("deepspeed", "fsdp"):
        raise UnsupportedSetupError(f"{engine} needs CUDA GPUs; on CPU use plain DDP (torchrun/accelerate --cpu)")
    quant_storage = compute_dtype if quantization and engine == "fsdp" else None
    # DDP/DeepSpeed: every process holds its whole (quantised) model on its own GPU.
    device_map = None
    if quantization and torch.cuda.is_available() and engine != "fsdp":
        device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return SetupPlan(engine, zero_stage, quantization, quant_storage, device_map)
