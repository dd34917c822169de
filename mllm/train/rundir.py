"""The run directory: what a training run leaves in `output_dir`, and how a new or resumed run may use it.

Layout: `checkpoint-<step>/` (complete checkpoints), the final model (`config.json` + the parts it lists),
`training_summary.json`, `train.log`, `train_config.json`, and `superseded-<time>-after-step-<N>/` (a resumed
run's later checkpoints, set aside instead of mixed in). Names starting with `.` are in-flight states of the
crash-safe writes in `mllm.train.durable`; `recover()` settles each of them on the next start:

  .tmp-checkpoint-N    a checkpoint being written             → deleted (never resumed from)
  .old-checkpoint-N    the previous checkpoint-N mid-replace  → renamed back if checkpoint-N is missing, else deleted
  .deleting-*          a directory being deleted              → deleted
  .tmp-model           the final model being written          → deleted (the previous final model is intact)
  .new-model           the final model written and synced     → swapped in (roll forward)
  .old-model           the previous final model's parts       → deleted once no .new-model is pending

Planning (`plan_run_dir`) only reads, so every process of a multi-process run can check it before any model
loads; the main process then applies it. Torch-free.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..config import MANIFEST_NAME
from ..errors import UserError
from .durable import StepHook, fsync_dir, move_entries, remove_tree
from .final_model import (
    MODEL_NEW,
    MODEL_OLD,
    manifest_parts,
    read_manifest,
    swap_model_in,
)

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
TRAINABLE_NAME = "trainable.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
SHARDED_STATE_DIR = "accelerate_state"  # DeepSpeed / FSDP: sharded model+optimizer state written by accelerate
SUMMARY_NAME = "training_summary.json"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
_OLD_RE = re.compile(r"^\.old-checkpoint-(\d+)$")
_GARBAGE_RE = re.compile(r"^\.(tmp-checkpoint-\d+|deleting-.+|tmp-model)$")


class RunDirError(UserError):
    """The output or resume directory cannot be used as asked; the message says what to pass instead."""


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / f"checkpoint-{step}"


def temp_checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / f".tmp-checkpoint-{step}"


def aside_checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / f".old-checkpoint-{step}"


def trash_dir(path: Path) -> Path:
    return path.with_name(f".deleting-{path.name}")


@dataclass
class RunDirScan:
    """What a run directory holds, read without changing anything."""

    checkpoints: dict[int, Path] = field(default_factory=dict)  # complete, under their own name
    recoverable: dict[int, Path] = field(default_factory=dict)  # .old-checkpoint-N whose checkpoint-N is missing
    garbage: list[Path] = field(default_factory=list)  # in-flight leftovers that recovery deletes
    pending_model: bool = False  # .new-model: a final model to swap in
    has_model: bool = False  # a final model (after recovery)
    model_step: int | None = None  # its train_steps

    @property
    def complete_steps(self) -> list[int]:
        """Steps of the complete checkpoints as they will be after recovery, oldest first."""
        return sorted({*self.checkpoints, *self.recoverable})

    @property
    def holds_a_run(self) -> bool:
        return bool(self.complete_steps) or self.has_model


def scan(run_dir: Path) -> RunDirScan:
    found = RunDirScan()
    if not run_dir.is_dir():
        return found
    for child in run_dir.iterdir():
        name = child.name
        if (m := _CKPT_RE.match(name)) and (child / STATE_NAME).is_file():
            found.checkpoints[int(m.group(1))] = child
        elif m := _OLD_RE.match(name):
            found.recoverable[int(m.group(1))] = child
        elif _GARBAGE_RE.match(name):
            found.garbage.append(child)
    for step in [s for s in found.recoverable if s in found.checkpoints]:
        found.garbage.append(found.recoverable.pop(step))  # the replacement finished: the old copy is garbage
    for step, path in list(found.recoverable.items()):
        if not (path / STATE_NAME).is_file():
            found.garbage.append(found.recoverable.pop(step))
    found.pending_model = (run_dir / MODEL_NEW / MANIFEST_NAME).is_file()
    if (run_dir / MODEL_NEW).exists() and not found.pending_model:
        found.garbage.append(run_dir / MODEL_NEW)  # its manifest was already swapped in
    if (run_dir / MODEL_OLD).exists() and not found.pending_model:
        found.garbage.append(run_dir / MODEL_OLD)
    manifest = run_dir / MODEL_NEW / MANIFEST_NAME if found.pending_model else run_dir / MANIFEST_NAME
    found.has_model = manifest.is_file()  # a pending model is the one the run dir holds after recovery
    if found.has_model:
        extra = read_manifest(manifest).get("extra")
        found.model_step = extra.get("train_steps") if isinstance(extra, dict) else None
    return found


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under their own names, oldest first."""
    return sorted(scan(Path(run_dir)).checkpoints.items())


def find_resume_checkpoint(path: str | Path) -> Path:
    """`path` is a checkpoint directory or a run directory (its latest complete checkpoint).

    For a run directory the answer is where the checkpoint is after `recover()` (the main process recovers
    before any process reads it)."""
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"--resume_from {path} does not exist")
    if (path / STATE_NAME).is_file():
        return path
    steps = scan(path).complete_steps
    if not steps:
        raise RunDirError(f"--resume_from {path}: no complete checkpoint there (looked for checkpoint-N/{STATE_NAME})")
    return checkpoint_dir(path, steps[-1])


def current_location(checkpoint: Path) -> Path:
    """Where a checkpoint that `find_resume_checkpoint` named is before recovery has run."""
    match = _CKPT_RE.match(checkpoint.name)
    if checkpoint.exists() or not match:
        return checkpoint
    return aside_checkpoint_dir(checkpoint.parent, int(match.group(1)))


def checkpoint_step(checkpoint: Path) -> int:
    match = _CKPT_RE.match(checkpoint.name) or _OLD_RE.match(checkpoint.name)
    if match:
        return int(match.group(1))
    state = read_trainer_state(checkpoint)
    return int(state.get("step", 0))


def read_trainer_state(checkpoint: Path) -> dict:
    path = checkpoint / STATE_NAME
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"cannot read {path}: {exc}; {other_checkpoints(checkpoint)}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise RunDirError(f"cannot read {path}: not a trainer state (no integer 'step')")
    return state


def model_entries(run_dir: Path) -> list[str]:
    """The names in the run dir that belong to its final model (manifest, listed parts, summary)."""
    return [MANIFEST_NAME, *manifest_parts(run_dir / MANIFEST_NAME), SUMMARY_NAME]


@dataclass
class RunDirPlan:
    run_dir: Path
    resume_checkpoint: Path | None = None  # its path after recovery
    resume_source: Path | None = None  # where it is now (`.old-checkpoint-N` if a replacement was interrupted)
    resume_step: int | None = None
    overwrite: bool = False  # delete the previous run's checkpoints and model first
    supersede_steps: list[int] = field(default_factory=list)  # checkpoints after the resume step, set aside
    supersede_model: bool = False  # the final model is not the resume step's: set aside too


def plan_run_dir(output_dir: str | Path, resume_from: str | Path | None, overwrite: bool) -> RunDirPlan:
    """Decide how this run uses `output_dir`, or refuse with one line. Reads only."""
    run_dir = Path(output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--output_dir {run_dir} exists and is not a directory")
    here = scan(run_dir)
    plan = RunDirPlan(run_dir, overwrite=overwrite)
    if resume_from:
        plan.resume_checkpoint = find_resume_checkpoint(resume_from)
        plan.resume_source = current_location(plan.resume_checkpoint)
        plan.resume_step = checkpoint_step(plan.resume_source)
    inside = plan.resume_checkpoint is not None and _same_dir(plan.resume_checkpoint.parent, run_dir)
    if overwrite:
        if inside:
            raise RunDirError(f"--overwrite_output_dir would delete {plan.resume_checkpoint}, which --resume_from "
                              "names: drop one of the two flags")
        return plan
    if not here.holds_a_run:
        return plan
    held = ", ".join(f"checkpoint-{s}" for s in here.complete_steps[-3:]) or "a final model"
    if plan.resume_checkpoint is None:
        raise RunDirError(f"--output_dir {run_dir} already holds a training run ({held}); continue it with "
                          f"--resume_from {run_dir}, choose another --output_dir, or pass --overwrite_output_dir "
                          "to replace it")
    if not inside:
        raise RunDirError(f"--output_dir {run_dir} holds another run ({held}) than the --resume_from checkpoint "
                          f"{plan.resume_checkpoint}; choose another --output_dir or pass --overwrite_output_dir")
    plan.supersede_steps = [s for s in here.complete_steps if s > plan.resume_step]
    plan.supersede_model = here.has_model and here.model_step != plan.resume_step
    return plan


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def apply_plan(plan: RunDirPlan) -> None:
    """Main process only: settle leftovers, delete (overwrite) or set aside (resume) what the plan says."""
    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if plan.overwrite:
        _delete_previous_run(run_dir)
        return
    recover(run_dir)
    if plan.supersede_steps or plan.supersede_model:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = run_dir / f"superseded-{stamp}-after-step-{plan.resume_step}"
        names = [f"checkpoint-{s}" for s in plan.supersede_steps]
        if plan.supersede_model:
            names += model_entries(run_dir)
        move_entries(names, run_dir, target)
        logger.warning("resuming from step %d: moved the later state of the previous run (%s) to %s",
                       plan.resume_step, ", ".join(n for n in names if (target / n).exists()), target)


def recover(run_dir: Path, step_hook: StepHook = None) -> None:
    """Settle every in-flight state a killed run can leave (see the module docstring)."""
    found = scan(run_dir)
    if found.pending_model:
        swap_model_in(run_dir, step_hook)
        found = scan(run_dir)
    for step, path in found.recoverable.items():
        os.replace(path, checkpoint_dir(run_dir, step))
        logger.warning("recovered %s from an interrupted checkpoint replacement", checkpoint_dir(run_dir, step))
    for path in found.garbage:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    fsync_dir(run_dir)


def _delete_previous_run(run_dir: Path) -> None:
    found = scan(run_dir)
    names = [f"checkpoint-{s}" for s in found.checkpoints] + [p.name for p in found.recoverable.values()]
    names += [p.name for p in found.garbage] + model_entries(run_dir) + [MODEL_NEW, MODEL_OLD]
    removed = []
    for name in names:
        path = run_dir / name
        if path.is_dir():
            remove_tree(path, trash_dir(path))
            removed.append(name)
        elif path.exists():
            path.unlink()
            removed.append(name)
    if removed:
        logger.warning("--overwrite_output_dir: deleted the previous run's %s from %s", ", ".join(sorted(removed)), run_dir)


def rng_state_name(rank: int) -> str:
    return f"rng_state_{rank}.pt"


def verify_checkpoint_files(checkpoint: Path) -> None:
    """Cheap structural check of a checkpoint's state files before any model loads: each exists and is not
    truncated (a torch zip archive has its central directory, a safetensors file the size its header says).
    Damage inside a file is still caught, and named, when it is loaded."""
    state = read_trainer_state(checkpoint)
    if (checkpoint / SHARDED_STATE_DIR).is_dir():
        required = [SCHEDULER_NAME]
    else:
        required = [TRAINABLE_NAME, OPTIMIZER_NAME, SCHEDULER_NAME]
    ranks = state.get("world_size", 1) if isinstance(state.get("world_size", 1), int) else 1
    optional = [rng_state_name(r) for r in range(ranks)]
    for name in required + optional:
        path = checkpoint / name
        if not path.is_file():
            if name in optional:
                continue
            raise RunDirError(f"cannot resume from {checkpoint}: {name} is missing; {other_checkpoints(checkpoint)}")
        problem = _truncation(path)
        if problem:
            raise RunDirError(f"cannot resume from {checkpoint}: {path.name} is damaged ({problem}); "
                              f"{other_checkpoints(checkpoint)}")


def other_checkpoints(checkpoint: Path) -> str:
    """Advice for a damaged checkpoint: the newest other complete one of the same run, if any."""
    steps = [s for s in scan(checkpoint.parent).complete_steps if checkpoint_dir(checkpoint.parent, s) != checkpoint]
    if not steps:
        return "no other checkpoint of this run to resume from"
    return f"resume from an earlier one, e.g. --resume_from {checkpoint_dir(checkpoint.parent, steps[-1])}"


def _truncation(path: Path) -> str | None:
    if path.suffix == ".pt":
        if not zipfile.is_zipfile(path):
            return "not a complete torch archive"
        return None
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "shorter than a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return "header larger than the file"
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "unreadable safetensors header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    if 8 + length + max(ends, default=0) != size:
        return f"{size} bytes where the header describes {8 + length + max(ends, default=0)}"
    return None
