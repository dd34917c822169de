"""Which distributed set-ups are supported, decided before any weights are loaded, and the Accelerator for them.

accelerate does the distribution (DDP, DeepSpeed, FSDP, multi-node); this module refuses combinations that
are known to fail late and obscurely (LLaVA issue #1692: QLoRA + ZeRO-3 crashes on meta tensors), picks the
settings a combination needs (QLoRA + FSDP: `bnb_4bit_quant_storage` equal to the compute dtype; one GPU per
rank as the load target so no rank materialises the whole LLM on its CPU), and creates the Accelerator.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from .engine import ENGINES, UnsupportedSetupError, detect_engine, refuse_unsupported  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

@dataclass
class SetupPlan:
    engine: str  # none | ddp | deepspeed | fsdp
    zero_stage: int | None
    quantization: str | None
    quant_storage: torch.dtype | None
    device_map: dict | None
    on_cuda: bool = False

    @property
    def shards_state(self) -> bool:
        """Optimizer (and maybe weights) live in shards across ranks: saved and restored by accelerate."""
        return self.engine in ("deepspeed", "fsdp")

    @property
    def shards_parameters(self) -> bool:
        """No rank holds whole weights: they must be gathered before a model can be saved or hashed."""
        return self.engine == "fsdp" or (self.engine == "deepspeed" and self.zero_stage == 3)

    def llm_stays_in_compute_dtype(self, mode: str) -> bool:
        """Full fine-tuning on GPUs keeps the LLM in bf16 (see `keep_trainable_precision`)."""
        return mode == "full" and self.on_cuda


def plan_setup(mode: str, compute_dtype: torch.dtype, engine: str | None = None, zero_stage: int | None = None, *,
               on_cuda: bool | None = None, local_rank: int | None = None) -> SetupPlan:
    """Check `mode` against the engine and decide how the LLM is loaded; raises before anything is loaded."""
    if engine is None:
        engine, zero_stage = detect_engine()
    on_cuda = torch.cuda.is_available() if on_cuda is None else on_cuda
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    quantization = "4bit" if mode == "qlora" else None
    refuse_unsupported(mode, engine, zero_stage)
    quant_storage = compute_dtype if quantization and engine == "fsdp" else None
    # Every rank loads its LLM straight onto its own GPU (never the whole model on its CPU first), except where the
    # engine places weights itself: FSDP (rank 0 loads, accelerate shards) and ZeRO-3 (partitioned at load).
    device_map = None
    if on_cuda and engine != "fsdp" and not (engine == "deepspeed" and zero_stage == 3):
        device_map = {"": local_rank}
    return SetupPlan(engine, zero_stage, quantization, quant_storage, device_map, on_cuda)


def _gloo_without_deepspeed_ops() -> None:
    """DeepSpeed on CPU processes talks gloo, without its compiled ops.

    Its CPU backend would first probe every op builder (compiler runs) and JIT-compile a shared-memory all-reduce
    with g++ (1-4 minutes on a fresh machine) before falling back to gloo where the build is impossible; the
    optimizer here is torch's own AdamW, so no op is needed. Marking the ops unavailable (DeepSpeed's own table,
    filled lazily on first access) takes the gloo path at once.
    """
    import deepspeed.ops
    from deepspeed.ops.op_builder.all_ops import ALL_OPS

    deepspeed.ops.__compatible_ops__ = dict.fromkeys([*ALL_OPS, "deepspeed_not_implemented"], False)


def create_accelerator(plan: SetupPlan, *, mixed_precision: str, gradient_accumulation_steps: int, log_with,
                       project_dir: str):
    """The Accelerator for `plan`; on CPUs it keeps the FSDP or DeepSpeed engine the launch configuration asked for.

    accelerate 1.15 turns any CPU launch into plain DDP over gloo (`AcceleratorState` only enables FSDP and
    DeepSpeed next to a GPU backend), so `fsdp.yaml` with `use_cpu: true` silently trained without sharding.
    Both engines run on CPU processes over gloo (torch's FSDP2; DeepSpeed's CPU accelerator), so the engine
    plugin that accelerate built from the launch environment is switched back on, and the same code path as
    on GPUs is exercised.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    accelerator = Accelerator(
        cpu=not plan.on_cuda,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=log_with,
        project_dir=project_dir,
    )
    state = accelerator.state
    if plan.on_cuda or state.distributed_type != DistributedType.MULTI_CPU or plan.engine not in ("fsdp", "deepspeed"):
        return accelerator
    if plan.engine == "fsdp":
        from accelerate import FullyShardedDataParallelPlugin

        state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables accelerate launch set
        state.distributed_type = DistributedType.FSDP
    else:
        from accelerate.utils import DeepSpeedPlugin

        plugin = DeepSpeedPlugin()  # from the ACCELERATE_DEEPSPEED_* variables
        plugin.set_mixed_precision(mixed_precision)
        plugin.select(_from_accelerator_state=True)
        state.deepspeed_plugins = plugin
        state.distributed_type = DistributedType.DEEPSPEED
        _gloo_without_deepspeed_ops()
    from accelerate.state import PartialState

    PartialState._shared_state["distributed_type"] = state.distributed_type  # AcceleratorState copies it from here
    logger.info("CPU processes: %s enabled over gloo (accelerate would have fallen back to DDP)", plan.engine)
    return accelerator
