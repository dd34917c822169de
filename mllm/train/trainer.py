"""The training loop: a compact accelerate loop shared by stage 1 (projector) and stage 2 (QLoRA/LoRA/full).

Why not HF `Trainer`: we need checkpoints that are atomic and usable as models, exact resume (sampler
position, RNG per rank) tested by SIGKILL, a token-weighted loss that is exact under gradient accumulation
and DDP, the projector's own learning rate, NaN stops that name the samples, and bad-data counts in the
logs. Each is a few lines here and a subclass-and-override fight with `Trainer`. accelerate still does the
distribution (DDP, DeepSpeed, FSDP, multi-node) and the trackers (tensorboard, wandb).
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch

from ..builder import build_model, load_tokenizer
from ..constants import IGNORE_INDEX
from ..llm import resolve_dtype
from ..serialization import save_pretrained
from ..validation import validate_spec
from .checkpointing import (
    SHARDED_STATE_DIR,
    CheckpointWriter,
    load_resume_state,
    load_scheduler_state,
    read_trainer_state,
)
from .config import TrainConfig, save_config
from .data import build_train_data
from .distributed import create_accelerator, plan_setup
from .init_from import apply_init_from
from .durable import write_text_atomic
from .final_model import publish_model
from .metrics import ProgressLogger, StepStats
from .nonfinite import NonFiniteGradGuard, TrainingDivergedError
from .preflight import Preflight, preflight
from .run_record import ResumeMismatchError, carried_position
from .rundir import SUMMARY_NAME, apply_plan
from .sharding import count_fsdp_units, gather_whole_weights, whole_tensors

logger = logging.getLogger(__name__)


class NonFiniteLossError(TrainingDivergedError):
    """The loss became NaN/inf; the message names the optimizer step and the samples of the micro-batch."""


def _projector_path(path: str | None) -> str | None:
    """Accept a stage-1 run/checkpoint directory or its `projector/` directory."""
    if not path:
        return None
    p = Path(path)
    return str(p / "projector") if (p / "projector").is_dir() else str(p)


def _optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with LLaVA's four groups: (projector | rest) × (decay | no decay for biases and norms)."""
    groups = []
    lrs = {"projector": config.projector_lr or config.learning_rate, "llm": config.learning_rate,
           "vision_tower": config.tower_lr or config.learning_rate}
    for part, params in model.trainable_parameters().items():
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        for chunk, wd in ((decay, config.weight_decay), (no_decay, 0.0)):
            if chunk:
                groups.append({"params": chunk, "lr": lrs[part], "weight_decay": wd, "name": f"{part}{'' if wd else '_no_decay'}"})
    if not groups:
        raise ValueError("nothing to train: no parameter requires grad (check mode / unfreeze settings)")
    return torch.optim.AdamW(groups, betas=(config.adam_beta1, config.adam_beta2))


def _main_lr(optimizer) -> float:
    """The learning rate of the LLM (or tower) group, else the projector's: what a user reads as "the" lr."""
    groups = optimizer.param_groups
    return next((g["lr"] for g in groups if not g.get("name", "").startswith("projector")), groups[0]["lr"])


def _placeholder_batch(tokenizer) -> dict:
    """One unlabelled token: what a rank whose micro-batch lost all its samples feeds the wrapped model, so that it
    makes the same forward/backward collectives as the other ranks (FSDP gathers, DDP/ZeRO reductions)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else (tokenizer.pad_token_id or 0)
    ids = torch.tensor([[token]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.full_like(ids, IGNORE_INDEX)}


def keep_trainable_precision(model, *, keep_llm_dtype: bool) -> None:
    """Trainable weights train in fp32 (bf16 compute comes from autocast), except a fully trained LLM on GPUs.

    The small trainable parts (projector, LoRA, unfrozen tower blocks) get fp32 weights and AdamW states. A fully
    fine-tuned LLM keeps its bf16 weights on CUDA (fp32 would cost 16 bytes per parameter with Adam): DeepSpeed
    then keeps fp32 master weights and optimizer states in its ZeRO shards, FSDP (accelerate) keeps sharded fp32
    master weights and computes in bf16, and plain DDP / one GPU trains in pure bf16 (bf16 AdamW states, as HF
    Trainer does with a bf16-loaded model).
    """
    kept = {id(p) for p in model.llm.parameters()} if keep_llm_dtype else set()
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32 and id(p) not in kept:
            p.data = p.data.float()


def enable_tf32(enabled: bool, on_cuda: bool) -> None:
    """TF32 matmuls on Ampere+ GPUs (LLaVA's `--tf32 True`); CPUs are left alone."""
    if on_cuda:
        torch.set_float32_matmul_precision("high" if enabled else "highest")
        torch.backends.cudnn.allow_tf32 = enabled


def train(config: TrainConfig, checked: Preflight | None = None) -> Path:
    """Run one training stage; `checked` is `preflight(config)` when the caller already ran it."""
    config = apply_init_from(config)  # the checkpoint's model fields, before anything is checked or loaded
    checked = checked or preflight(config)  # paths, options, run dir, resume compatibility: before any model
    from transformers import get_scheduler

    on_cuda = torch.cuda.is_available()
    mode = config.resolved_mode(on_cuda)
    compute_dtype = resolve_dtype(config.dtype)
    plan = plan_setup(mode, compute_dtype)
    spec = config.model_spec(mode, plan.quantization)
    validate_spec(spec, train_llm=mode == "full", unfreeze_tower_blocks=config.unfreeze_tower_blocks)  # before any load
    ga_steps = checked.gradient_accumulation_steps
    enable_tf32(config.tf32, on_cuda)
    accelerator = create_accelerator(
        plan,
        mixed_precision="bf16" if on_cuda and compute_dtype == torch.bfloat16 else "no",
        gradient_accumulation_steps=ga_steps,
        log_with=config.report_to or None,
        project_dir=config.output_dir,
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    sharded = plan.shards_state  # optimizer (and maybe weights) live in shards across ranks
    if plan.engine == "deepspeed":
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = config.micro_batch_size
        ds_config["gradient_accumulation_steps"] = ga_steps
        ds_config["gradient_clipping"] = config.max_grad_norm if config.max_grad_norm and config.max_grad_norm > 0 else 0.0
    run_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        _log_to_file(run_dir / "train.log")
        apply_plan(checked.run_dir)  # recover interrupted writes; overwrite, or set a resumed run's later state aside
        save_config(config, run_dir)
    accelerator.wait_for_everyone()  # no rank reads the run dir before it is settled
    torch.manual_seed(config.seed)  # identical initialisation of new weights on every rank

    model, processor = build_model(
        spec,
        tokenizer=None if config.tokenizer is None else load_tokenizer(config.tokenizer),
        projector_path=_projector_path(config.pretrained_projector),
        dtype=compute_dtype,
        device_map=plan.device_map,
        train_llm=mode == "full",
        train_projector=True,
        unfreeze_tower_blocks=config.unfreeze_tower_blocks,
        gradient_checkpointing=config.gradient_checkpointing,
        quant_storage=plan.quant_storage,
    )
    model.config.extra.update({"stage": config.stage, "mode": mode})
    keep_trainable_precision(model, keep_llm_dtype=plan.llm_stays_in_compute_dtype(mode))
    model.train()  # a frozen tower stays in eval mode by itself (VisionTower.train)

    data = build_train_data(config, processor, rank=rank, world_size=world, grad_accum=ga_steps, records=checked.records)
    steps_per_epoch = max(1, math.ceil(data.micro_batches_per_epoch / ga_steps))
    total_steps = config.max_steps if config.max_steps > 0 else max(1, math.ceil(config.num_train_epochs * steps_per_epoch))
    optimizer = _optimizer(model, config)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)

    state = {"step": 0, "epoch": 0, "micro_batches_in_epoch": 0, "tokens_seen": 0, "skipped": {},
             "nonfinite_grad_steps": 0}
    record = {**checked.run, "data": {**checked.run["data"], "records": len(data.dataset)}}
    checkpoint = checked.run_dir.resume_checkpoint
    if checkpoint is not None and not sharded:
        saved = load_resume_state(checkpoint, rank=rank, model=model, optimizer=optimizer, scheduler=scheduler)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(wrapped)
    fsdp_units = count_fsdp_units(unwrapped) if plan.engine == "fsdp" else None
    if fsdp_units and rank == 0:
        logger.info("FSDP units: %s", ", ".join(f"{n} x {k}" for k, n in fsdp_units.items()))
    placeholder = _placeholder_batch(processor.tokenizer)
    if checkpoint is not None and sharded:  # engine-specific sharded state, restored by accelerate
        accelerator.load_state(str(checkpoint / SHARDED_STATE_DIR))
        load_scheduler_state(checkpoint, scheduler)
        saved = read_trainer_state(checkpoint)
    if checkpoint is not None:
        _restore_progress(state, saved, record, data, config, checkpoint)
        if rank == 0 and state.get("skipped"):
            data.skip_report.merge(state["skipped"])  # ranks' reports are merged again at each save
        logger.info("resumed from %s at step %d (epoch %d)", checkpoint, state["step"], state["epoch"])
    writer = CheckpointWriter(run_dir, rank=rank, world_size=world, barrier=accelerator.wait_for_everyone,
                              keep_last=config.save_total_limit)
    guard = NonFiniteGradGuard(config.max_nonfinite_grad_steps, skipped=state["nonfinite_grad_steps"])
    progress = ProgressLogger(accelerator, config, total_steps, initial=state["step"])
    if config.report_to:
        accelerator.init_trackers(run_dir.name, config={k: v for k, v in config.to_dict().items() if v is not None and not isinstance(v, list)})

    def save_checkpoint(step: int, whole: dict | None = None) -> Path:
        state["skipped"] = data.merged_skips(accelerator).to_dict()
        consumed = state["micro_batches_in_epoch"] * config.micro_batch_size
        trainer_state = {**state, "run": record, "sampler": data.sampler.state_dict(consumed=consumed)}
        whole = gather_whole_weights(accelerator, plan, wrapped, unwrapped) if whole is None else whole

        def save_model(directory):
            with whole_tensors(unwrapped, whole):
                save_pretrained(unwrapped, processor, directory)

        return writer.save(step, save_model=save_model, model=unwrapped,
                           optimizer=optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
                           scheduler=scheduler, trainer_state=trainer_state,
                           save_sharded=(lambda d: accelerator.save_state(str(d / SHARDED_STATE_DIR))) if sharded else None)

    started, last_saved = time.time(), None
    while state["step"] < total_steps:
        batches = data.iter_epoch(state["epoch"], start_micro_batch=state["micro_batches_in_epoch"])
        epoch_done = False
        while state["step"] < total_steps and not epoch_done:
            window = []
            for batch in batches:
                window.append(batch)
                if len(window) == ga_steps:
                    break
            if len(window) < ga_steps:
                epoch_done = True
            if not window:
                break
            stats = _optimizer_step(accelerator, wrapped, unwrapped, optimizer, scheduler, window, config, state["step"],
                                    data, placeholder, guard)
            state["nonfinite_grad_steps"] = guard.skipped
            state["step"] += 1
            state["micro_batches_in_epoch"] += len(window)
            state["tokens_seen"] += stats.tokens
            progress.update(state["step"], stats, _main_lr(optimizer), data.skip_report)
            if config.save_steps > 0 and state["step"] % config.save_steps == 0 and state["step"] < total_steps:
                last_saved = save_checkpoint(state["step"])
        if epoch_done or state["step"] < total_steps:
            state["epoch"] += 1
            state["micro_batches_in_epoch"] = 0

    whole = gather_whole_weights(accelerator, plan, wrapped, unwrapped)  # collective; None when ranks hold whole weights
    if last_saved is None or not last_saved.name.endswith(f"-{state['step']}"):
        last_saved = save_checkpoint(state["step"], whole)
    skips = data.merged_skips(accelerator)
    with whole_tensors(unwrapped, whole):
        replicas = _trainable_digest(accelerator, unwrapped, compare=not plan.shards_parameters)
        if accelerator.is_main_process:
            publish_model(run_dir, lambda d: save_pretrained(unwrapped, processor, d, extra={"train_steps": state["step"]}))
    if accelerator.is_main_process:
        summary = {
            "stage": config.stage, "mode": mode, "steps": state["step"], "epochs_started": state["epoch"] + 1,
            "tokens_seen": state["tokens_seen"], "wall_time_s": round(time.time() - started, 2),
            "final_loss": progress.last_loss, "skipped": skips.counts, "world_size": world,
            "gradient_accumulation_steps": ga_steps, "checkpoint": str(last_saved), "model_dir": str(run_dir),
            "trainable_sha256": replicas, "nonfinite_grad_steps_skipped": state["nonfinite_grad_steps"],
            "engine": plan.engine, "loss_reduction": config.loss_reduction,
        }
        if fsdp_units:
            summary["fsdp_units"] = fsdp_units
        write_text_atomic(run_dir / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
        progress.summary(summary, skips.summary(len(data.dataset)))
    accelerator.end_training()
    return run_dir


def _label_count(batch) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def loss_weights(reduction: str, label_counts: list[int], total_labels: float, total_micro_batches: float) -> list[float]:
    """Each micro-batch's weight on its mean loss so that the gradient is the chosen mean over the global batch.

    token: one token-weighted mean over every label of the global batch (exact under accumulation and any
    split across ranks). per_device: what HF Trainer computes under LLaVA's settings, the mean of per-micro-batch
    means over devices and accumulation steps (micro-batches without labels are left out of the mean). The
    caller multiplies by world size × accumulation steps, which DDP averaging and accelerate's division undo.
    """
    if reduction == "token":
        return [n / total_labels if total_labels else 0.0 for n in label_counts]
    return [1.0 / total_micro_batches if n and total_micro_batches else 0.0 for n in label_counts]


def _optimizer_step(accelerator, wrapped, unwrapped, optimizer, scheduler, window, config, step, data,
                    placeholder, guard: NonFiniteGradGuard) -> StepStats:
    world, ga = accelerator.num_processes, accelerator.gradient_accumulation_steps
    counts = [_label_count(b) for b in window]
    mine = torch.tensor([float(sum(counts)), float(sum(1 for n in counts if n))], device=accelerator.device)
    total_labels, total_micro = accelerator.reduce(mine, reduction="sum").tolist()
    weights = loss_weights(config.loss_reduction, counts, total_labels, total_micro)
    # `accumulate` syncs gradients (DDP all-reduce, FSDP reduce-scatter, the DeepSpeed engine's step) when its
    # counter reaches a multiple of the accumulation steps: start it so that happens on this window's last
    # micro-batch, also for the short window at an epoch's end.
    accelerator.step = ga - len(window)
    objective, tokens = 0.0, 0
    for i, batch in enumerate(window):
        data.skip_report.add(batch.get("skipped", []))
        empty = batch["input_ids"].shape[0] == 0  # every sample of this micro-batch was skipped
        inputs = placeholder if empty else batch
        with accelerator.accumulate(wrapped):
            with accelerator.autocast():
                out = wrapped(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                              pixel_values=inputs.get("pixel_values"), labels=inputs["labels"])
            _stop_if_not_finite(accelerator, out.loss, step, i, batch)
            accelerator.backward(out.loss * (weights[i] * world * ga))
        if not empty:
            share = counts[i] if config.loss_reduction == "token" else (1.0 if counts[i] else 0.0)
            objective += out.loss.item() * share
            tokens += int(batch["attention_mask"].sum())
    # the norm is needed even without clipping (max_grad_norm 0 clips at inf): a non-finite one skips the update
    clip_at = config.max_grad_norm if config.max_grad_norm and config.max_grad_norm > 0 else math.inf
    norm = accelerator.clip_grad_norm_([p for p in unwrapped.parameters() if p.requires_grad], clip_at)
    grad_norm = None if norm is None else float(norm)
    if guard.allows_update(grad_norm, step=step + 1, sample_ids=lambda: _sample_ids(accelerator, window)):
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    reduced = accelerator.reduce(torch.tensor([objective, float(tokens)], device=accelerator.device), reduction="sum")
    denominator = total_labels if config.loss_reduction == "token" else total_micro
    mean_loss = reduced[0].item() / denominator if denominator else float("nan")
    return StepStats(loss=mean_loss, tokens=int(reduced[1].item()), grad_norm=grad_norm)


def _sample_ids(accelerator, window) -> list:
    """The ids of the samples of one optimizer step, over all ranks (a collective call)."""
    mine = [i for batch in window for i in batch.get("sample_ids", [])]
    if accelerator.num_processes == 1:
        return mine
    from accelerate.utils import gather_object

    return gather_object(mine)


def _restore_progress(state: dict, saved: dict, record: dict, data, config: TrainConfig, checkpoint: Path) -> None:
    """Take the checkpoint's progress counters; check (or, when accepted, adapt to) the sampler's geometry."""
    state.update({key: saved[key] for key in state if key in saved})
    if config.resume_ignore_mismatch:
        state["micro_batches_in_epoch"] = carried_position(state["micro_batches_in_epoch"], saved.get("run") or {}, record)
    elif "sampler" in saved:
        try:
            data.sampler.load_state_dict(saved["sampler"])
        except ValueError as exc:
            raise ResumeMismatchError(f"cannot resume from {checkpoint}: {exc}. Use the checkpoint's data and "
                                      "settings, or pass --resume_ignore_mismatch to continue anyway") from exc


def _stop_if_not_finite(accelerator, loss, step: int, micro_batch: int, batch) -> None:
    """Every rank makes this reduction for every micro-batch, so all ranks stop together on a NaN/inf loss."""
    bad = torch.tensor(0.0 if torch.isfinite(loss).item() else 1.0, device=accelerator.device)
    if accelerator.reduce(bad, reduction="sum").item() > 0:
        mine = not torch.isfinite(loss).item()
        raise NonFiniteLossError(
            f"non-finite loss at optimizer step {step + 1}, micro-batch {micro_batch}"
            + (f": loss={loss.item()} on samples {batch.get('sample_ids')}" if mine else
               " on another rank (see its log for the sample ids)")
        )


def _trainable_digest(accelerator, model, *, compare: bool) -> str:
    """sha256 of the trainable weights; with `compare`, data-parallel replicas that drifted apart are an error.

    Under FSDP / ZeRO-3 there is one (sharded) copy: rank 0 hashes the gathered whole weights and nothing is compared.
    """
    import hashlib

    if not compare and not accelerator.is_main_process:
        return ""  # only rank 0 holds the gathered whole weights
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().float().cpu().numpy().tobytes())
    mine = digest.hexdigest()
    if compare and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        digests = gather_object([mine])
        if len(set(digests)) != 1:
            raise RuntimeError(f"data-parallel ranks ended with different trainable weights: {digests}")
        logger.info("all %d ranks hold identical trainable weights (sha256 %s)", len(digests), mine[:16])
    return mine


def _log_to_file(path: Path) -> None:
    """Everything the package logs (progress records, skips, summary) also goes to the run's train.log."""
    package_logger = logging.getLogger("mllm")
    for old in [h for h in package_logger.handlers if getattr(h, "_llm2clip_run_log", False)]:
        package_logger.removeHandler(old)  # an earlier run in this process: its train.log gets no more lines
        old.close()
    handler = logging.FileHandler(path)
    handler._llm2clip_run_log = True
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger.addHandler(handler)
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)


