"""Atomic, resumable training checkpoints.

A checkpoint `checkpoint-<step>/` is both a usable model (manifest, projector, adapter, tokenizer — loadable
with `mllm.load_model`) and an exact resume point: every trainable tensor, optimizer, scheduler, each
rank's RNG states, and the trainer state (step, epoch, position in the epoch, counters, the run record of
`mllm.train.run_record`). It is written under `.tmp-checkpoint-<step>`, fsynced file by file, and renamed
only when complete (an existing copy is renamed aside first and deleted last; see `mllm.train.durable`), so a
crash at any point leaves the previous checkpoints intact and never a partial one under a checkpoint's name.
Weights that are not finite are never written. Pickles are read back with `torch.load(weights_only=True)`
only, and a state file that cannot be read is named in the error.
"""
from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError
from .durable import StepHook, publish_dir, remove_tree
from .rundir import (  # noqa: F401  (re-exported: the checkpoint layout's names)
    OPTIMIZER_NAME,
    SCHEDULER_NAME,
    SHARDED_STATE_DIR,
    STATE_NAME,
    TRAINABLE_NAME,
    aside_checkpoint_dir,
    checkpoint_dir,
    find_resume_checkpoint,
    list_checkpoints,
    other_checkpoints,
    read_trainer_state,
    rng_state_name,
    temp_checkpoint_dir,
    trash_dir,
)

logger = logging.getLogger(__name__)


class CheckpointReadError(UserError):
    """A state file of the checkpoint being resumed cannot be read or does not fit this run; the message names it."""


class NonFiniteWeightsError(UserError):
    """Trainable weights hold NaN/inf at save time: refusing to write them into a checkpoint."""


def capture_rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": [(k.tolist() if isinstance(k, np.ndarray) else k) for k in np.random.get_state()],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _require_finite(model: torch.nn.Module, step: int) -> None:
    """Checked where the weights live (no copy); data-parallel replicas agree, so every rank raises together."""
    bad = [name for name, p in model.named_parameters()
           if p.requires_grad and p.is_floating_point() and not torch.isfinite(p.detach()).all()]
    if bad:
        raise NonFiniteWeightsError(
            f"trainable weights are not finite at step {step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): "
            "not writing them into a checkpoint; the earlier checkpoints are intact")


def load_trainable_state(model: torch.nn.Module, path: Path) -> None:
    saved = _read(path, "trainable weights", lambda p: load_file(str(p)))
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    missing, unexpected = sorted(expected - set(saved)), sorted(set(saved) - expected)
    if missing or unexpected:
        raise CheckpointReadError(
            f"{path} does not match this run's trainable parameters: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def _read(path: Path, what: str, reader: Callable[[Path], object]):
    """Read one state file; any failure becomes one line naming the file (not "unpack requires a buffer")."""
    try:
        return reader(path)
    except FileNotFoundError as exc:
        raise CheckpointReadError(f"cannot resume: {path} ({what}) is missing") from exc
    except Exception as exc:
        raise CheckpointReadError(f"cannot resume: {path} ({what}) is unreadable or damaged "
                                  f"({type(exc).__name__}: {_first_line(exc)}); {other_checkpoints(path.parent)}") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def _apply(path: Path, what: str, load_state_dict: Callable[[dict], None], state: dict) -> None:
    try:
        load_state_dict(state)
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointReadError(f"cannot resume: {path} ({what}) does not fit this run ({_first_line(exc)})") from exc


def torch_state(path: Path, what: str):
    return _read(path, what, lambda p: torch.load(p, weights_only=True, map_location="cpu"))


class CheckpointWriter:
    """Writes checkpoints for all ranks: rank 0 writes shared files, every rank its RNG state.

    `step_hook(name)` is called after each durable step of a save (tests stop the process there)."""

    def __init__(self, run_dir: str | Path, *, rank: int, world_size: int, barrier: Callable[[], None], keep_last: int,
                 step_hook: StepHook = None):
        self.run_dir = Path(run_dir)
        self.rank, self.world_size, self.barrier = rank, world_size, barrier
        self.keep_last = keep_last
        self.step_hook = step_hook

    def save(
        self,
        step: int,
        *,
        save_model: Callable[[Path], None],
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        trainer_state: dict,
        save_sharded: Callable[[Path], None] | None = None,
    ) -> Path:
        final = checkpoint_dir(self.run_dir, step)
        tmp = temp_checkpoint_dir(self.run_dir, step)
        if save_sharded is None:
            _require_finite(model, step)
        if self.rank == 0:
            if tmp.exists():
                remove_tree(tmp, trash_dir(tmp))
            tmp.mkdir(parents=True)
        self.barrier()
        if save_sharded is not None:  # collective: every rank writes its shard
            save_sharded(tmp)
        if self.rank == 0:
            save_model(tmp)
            torch.save(scheduler.state_dict(), tmp / SCHEDULER_NAME)
            if save_sharded is None:
                save_file(trainable_state(model), str(tmp / TRAINABLE_NAME))
                torch.save(optimizer.state_dict(), tmp / OPTIMIZER_NAME)
        torch.save(capture_rng_state(), tmp / rng_state_name(self.rank))
        self.barrier()
        if self.rank == 0:
            # trainer state last: its presence marks the content complete; the rename makes it visible
            (tmp / STATE_NAME).write_text(json.dumps({**trainer_state, "world_size": self.world_size}, indent=2))
            self._step("written")
            publish_dir(tmp, final, aside_checkpoint_dir(self.run_dir, step), self.step_hook)
            self._prune(step)
        self.barrier()
        return final

    def _step(self, name: str) -> None:
        if self.step_hook is not None:
            self.step_hook(name)

    def _prune(self, just_written: int) -> None:
        """Keep the `keep_last` newest checkpoints up to the one just written; never that one itself."""
        if self.keep_last <= 0:
            return
        older = [(s, p) for s, p in list_checkpoints(self.run_dir) if s < just_written]
        for _, path in older[: max(0, len(older) - (self.keep_last - 1))]:
            remove_tree(path, trash_dir(path), self.step_hook)
            self._step("pruned")


def load_resume_state(checkpoint: Path, *, rank: int, model, optimizer, scheduler) -> dict:
    """Restore trainable weights, optimizer, scheduler and this rank's RNG; return the trainer state."""
    state = read_trainer_state(checkpoint)
    load_trainable_state(model, checkpoint / TRAINABLE_NAME)
    optimizer_path = checkpoint / OPTIMIZER_NAME
    _apply(optimizer_path, "optimizer state", optimizer.load_state_dict, torch_state(optimizer_path, "optimizer state"))
    load_scheduler_state(checkpoint, scheduler)
    rng_path = checkpoint / rng_state_name(rank)
    if rng_path.is_file():
        rng = torch_state(rng_path, "RNG state")
        _apply(rng_path, "RNG state", restore_rng_state, rng)
    else:
        logger.warning("no RNG state for rank %d in %s (world size changed?): continuing with fresh RNG", rank, checkpoint)
    return state


def load_scheduler_state(checkpoint: Path, scheduler) -> None:
    path = checkpoint / SCHEDULER_NAME
    _apply(path, "learning-rate scheduler state", scheduler.load_state_dict, torch_state(path, "scheduler state"))
