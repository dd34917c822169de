"""Everything a training run can check before it loads a model, in well under a second.

A wrong data path, a missing image folder, a projector directory without a projector, a resume directory
without a checkpoint (or with a damaged one, or from a different run), an output directory that holds
another run, a tracker whose package is missing, or an option out of range each fail here with one line
(`UserError`) instead of after minutes of loading a 7B LLM. Torch-free, so `pretrain`/`finetune` reach
this point without importing torch; `train()` runs it again for callers of the Python API.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..data.records import RecordStore
from ..errors import UserError
from .engine import detect_engine, refuse_unsupported
from .init_from import apply_init_from
from .run_record import check_resume, data_fingerprint, run_record
from .rundir import (
    RunDirPlan,
    plan_run_dir,
    read_trainer_state,
    verify_checkpoint_files,
)

logger = logging.getLogger(__name__)

# learning-rate schedules `transformers.get_scheduler` builds from a name alone (no extra arguments)
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
                    "comet_ml": ("comet_ml",), "aim": ("aim",), "clearml": ("clearml",), "dvclive": ("dvclive",)}
# projector.builder's file names (importing it would import torch); a test keeps them equal
PROJECTOR_FILES = ("projector.safetensors", "projector_config.json")


class ConfigValueError(UserError):
    """An option value out of its range; the message names the flag."""


@dataclass
class Preflight:
    """What the checks found and the run needs: the run-directory plan and the run record of this run."""

    run_dir: RunDirPlan
    world_size: int
    gradient_accumulation_steps: int
    run: dict  # mllm.train.run_record.run_record (the data fingerprint without its record count)
    resume_state: dict | None  # the resume checkpoint's trainer state
    records: RecordStore | None = None  # the data file, read and parsed once here, before any model loads


def preflight(config, world_size: int | None = None) -> Preflight:
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    config = apply_init_from(config)  # --init_from decides the model fields: check those, not the flags'
    check_options(config)
    try:
        ga = config.gradient_accumulation_steps(world)
    except ValueError as exc:
        raise ConfigValueError(str(exc)) from exc
    check_paths(config)
    records = read_records(config.data_path)
    plan = plan_run_dir(config.output_dir, config.resume_from, config.overwrite_output_dir)
    record = run_record(config, world_size=world, gradient_accumulation_steps=ga,
                        data=data_fingerprint(config.data_path))
    saved = None
    if plan.resume_checkpoint is not None:
        verify_checkpoint_files(plan.resume_source)
        saved = read_trainer_state(plan.resume_source)
        check_resume(saved, record, plan.resume_checkpoint, accept=config.resume_ignore_mismatch)
    return Preflight(plan, world, ga, record, saved, records)


def read_records(path) -> RecordStore:
    """The data file's records: one line for a file that is not a LLaVA JSON list / JSONL, or holds none."""
    try:
        records = RecordStore(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"--data_path {path}: {exc}") from exc
    if len(records) == 0:
        raise UserError(f"--data_path {path} holds no records")
    return records


def check_paths(config) -> None:
    data = Path(config.data_path) if config.data_path else None
    if data is None:
        raise UserError("--data_path is required (a LLaVA JSON or JSONL file)")
    if not data.exists():
        raise UserError(f"--data_path {data} does not exist")
    if not data.is_file():
        raise UserError(f"--data_path {data} is not a file (expected a LLaVA JSON or JSONL file)")
    if not os.access(data, os.R_OK):
        raise UserError(f"--data_path {data} is not readable")
    if config.image_folder and not Path(config.image_folder).is_dir():
        raise UserError(f"--image_folder {config.image_folder} is not a directory")
    if config.pretrained_projector:
        given = Path(config.pretrained_projector)
        folder = given / "projector" if (given / "projector").is_dir() else given
        if not given.exists():
            raise UserError(f"--pretrained_projector {given} does not exist")
        missing = [name for name in PROJECTOR_FILES if not (folder / name).is_file()]
        if missing:
            raise UserError(f"--pretrained_projector {given} holds no projector ({', '.join(missing)} missing in "
                            f"{folder}); pass a pretrain run directory or its projector/ directory")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigValueError(message)


def check_options(config) -> None:
    """Training options (the model spec is checked where the model is built)."""
    _require(config.learning_rate >= 0, f"--learning_rate must be >= 0, got {config.learning_rate}")
    for name in ("projector_lr", "tower_lr"):
        value = getattr(config, name)
        _require(value is None or value >= 0, f"--{name} must be >= 0, got {value}")
    _require(config.weight_decay >= 0, f"--weight_decay must be >= 0, got {config.weight_decay}")
    _require(0 <= config.warmup_ratio <= 1, f"--warmup_ratio must be in [0, 1], got {config.warmup_ratio}")
    _require(config.max_steps > 0 or config.num_train_epochs > 0,
             f"--num_train_epochs must be > 0 (or set --max_steps), got {config.num_train_epochs}")
    for name in ("save_steps", "save_total_limit", "num_workers", "max_grad_norm", "max_nonfinite_grad_steps"):
        value = getattr(config, name)
        _require(value >= 0, f"--{name} must be >= 0, got {value}")
    _require(config.logging_steps >= 1, f"--logging_steps must be >= 1, got {config.logging_steps}")
    for name in ("adam_beta1", "adam_beta2"):
        value = getattr(config, name)
        _require(0 <= value < 1, f"--{name} must be in [0, 1), got {value}")
    _require(config.lr_scheduler in SCHEDULERS,
             f"--lr_scheduler {config.lr_scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    check_trackers(config.report_to)
    if config.mode == "qlora":  # "auto" becomes qlora only on CUDA: plan_setup refuses that case after torch loads
        refuse_unsupported(config.mode, *detect_engine())


def check_trackers(report_to: list[str]) -> None:
    """Fail before loading anything when a requested tracker's package is missing."""
    for tracker in report_to:
        if tracker not in TRACKER_PACKAGES:
            raise ConfigValueError(f"--report_to {tracker!r} is not a known tracker; choose from "
                                   f"{', '.join(sorted(TRACKER_PACKAGES))}")
        if not any(importlib.util.find_spec(p) for p in TRACKER_PACKAGES[tracker]):
            raise ConfigValueError(f"--report_to {tracker} needs its package: pip install {TRACKER_PACKAGES[tracker][0]}")
