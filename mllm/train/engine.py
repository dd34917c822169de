"""Which distributed engine a launch asked for, and the mode/engine pairs that cannot work — without torch, so
the command line refuses them before anything heavy is imported (`preflight`) as well as in `plan_setup`."""
from __future__ import annotations

import os

from ..errors import UserError

ENGINES = ("none", "ddp", "deepspeed", "fsdp")


class UnsupportedSetupError(UserError, ValueError):
    """A training mode that cannot work with the chosen distributed engine; the message says what to use."""


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


def refuse_unsupported(mode: str, engine: str, zero_stage: int | None) -> None:
    """Raise for a resolved training mode the engine cannot run (QLoRA under ZeRO-3)."""
    if mode == "qlora" and engine == "deepspeed" and zero_stage == 3:
        raise UnsupportedSetupError(
            "QLoRA (4-bit LLM) cannot be sharded by DeepSpeed ZeRO-3 (bitsandbytes weights are not ZeRO-3 "
            "partitionable): use ZeRO-2 (mllm/accelerate_configs/deepspeed_zero2.yaml) or FSDP (fsdp_qlora.yaml), "
            "or --mode lora/full with ZeRO-3"
        )
