"""Whole weights out of sharded engines (FSDP, DeepSpeed ZeRO-3): gather them to rank 0 to save or hash a model.

Under FSDP and ZeRO-3 no rank holds whole parameters, so a model saved (or hashed) from one rank's modules would
be that rank's shard. `gather_whole_weights` is collective (every rank calls it) and returns whole tensors on
rank 0; `whole_tensors` then puts them in place of the sharded parameters for the duration of a save, so the
ordinary `save_pretrained` writes the model a one-process run would have written.
"""
from __future__ import annotations

import contextlib
from collections import Counter

from torch import nn


def _save_needs_frozen_weights(model) -> bool:
    """A save writes the trainable parts, plus the whole tower (frozen blocks too) when the tower is saved."""
    return model.vision_tower.trainable or model.config.tower.checkpoint is None


def gather_whole_weights(accelerator, plan, wrapped, model) -> dict | None:
    """Whole tensors of the weights a saved model needs, on rank 0 ({} on other ranks); None when ranks hold
    whole weights already (one process, DDP, ZeRO-1/2). A collective call: every rank must make it."""
    if not plan.shards_parameters:
        return None
    trainable_only = not _save_needs_frozen_weights(model)
    if plan.engine == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
        state = get_model_state_dict(wrapped, options=options)
    else:  # ZeRO-3: accelerate consolidates the 16-bit weights (zero3_save_16bit_model in the config)
        state = accelerator.get_state_dict(wrapped)
        if accelerator.is_main_process and trainable_only:
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            state = {k: v for k, v in state.items() if k in trainable}
    return state if accelerator.is_main_process else {}


@contextlib.contextmanager
def whole_tensors(model: nn.Module, state: dict | None):
    """Temporarily replace `model`'s (sharded) parameters named in `state` with those whole tensors."""
    replaced = []
    try:
        for name, tensor in (state or {}).items():
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            if leaf in owner._parameters:
                old = owner._parameters[leaf]
                owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=old.requires_grad)
                replaced.append((owner, leaf, old))
        yield model
    finally:
        for owner, leaf, old in reversed(replaced):
            owner._parameters[leaf] = old


def count_fsdp_units(model: nn.Module) -> dict[str, int]:
    """How many FSDP units wrap modules of each class (FSDP2 `fully_shard` or FSDP1 wrappers; the root included)."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    names = []
    for module in model.modules():
        if isinstance(module, FullyShardedDataParallel):
            names.append(type(module.module).__name__)
        elif isinstance(module, FSDPModule):  # fully_shard renames the class to FSDP<Name>
            names.append(type(module).__name__.removeprefix("FSDP"))
    return dict(Counter(names))
