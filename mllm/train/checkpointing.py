"""Atomic, resumable training checkpoints.

A checkpoint `checkpoint-<step>/` is both a usable model (manifest, projector, adapter, tokenizer — loadable
with `mllm.load_model`) and an exact resume point: every trainable tensor, optimizer, scheduler, each
rank's RNG states, and the trainer state (step, epoch, position in the epoch, counters). It is written
under `.tmp-checkpoint-<step>` and renamed only when complete, so a crash mid-write never leaves a
checkpoint that looks finished. Pickles are read back with `torch.load(weights_only=True)` only.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
TRAINABLE_NAME = "trainable.safetensors"
SHARDED_STATE_DIR = "accelerate_state"  # DeepSpeed / FSDP: sharded model+optimizer state written by accelerate
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def load_trainable_state(model: torch.nn.Module, path: Path) -> None:
    saved = load_file(str(path))
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    missing, unexpected = sorted(expected - set(saved)), sorted(set(saved) - expected)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path.parent} does not match this run's trainable parameters: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed, with a trainer state), oldest first."""
    found = []
    for child in Path(run_dir).iterdir() if Path(run_dir).is_dir() else []:
        match = _CKPT_RE.match(child.name)
        if match and (child / STATE_NAME).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def find_resume_checkpoint(path: str | Path) -> Path:
    """`path` is a checkpoint directory or a run directory (its latest complete checkpoint)."""
    path = Path(path)
    if (path / STATE_NAME).is_file():
        return path
    checkpoints = list_checkpoints(path)
    if not checkpoints:
        raise FileNotFoundError(f"no complete checkpoint to resume from in {path} (looked for checkpoint-N/{STATE_NAME})")
    return checkpoints[-1][1]


class CheckpointWriter:
    """Writes checkpoints for all ranks: rank 0 writes shared files, every rank its RNG state."""

    def __init__(self, run_dir: str | Path, *, rank: int, world_size: int, barrier: Callable[[], None], keep_last: int):
        self.run_dir = Path(run_dir)
        self.rank, self.world_size, self.barrier = rank, world_size, barrier
        self.keep_last = keep_last

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
        final = self.run_dir / f"checkpoint-{step}"
        tmp = self.run_dir / f".tmp-checkpoint-{step}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        if save_sharded is not None:  # collective: every rank writes its shard
            save_sharded(tmp)
        if self.rank == 0:
            save_model(tmp)
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if save_sharded is None:
                save_file(trainable_state(model), str(tmp / TRAINABLE_NAME))
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(capture_rng_state(), tmp / f"rng_state_{self.rank}.pt")
        self.barrier()
        if self.rank == 0:
            # trainer state last: its presence marks the content complete; the rename makes it visible
            (tmp / STATE_NAME).write_text(json.dumps({**trainer_state, "world_size": self.world_size}, indent=2))
            _fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.run_dir)
            self._prune()
        self.barrier()
        return final

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        for _, path in list_checkpoints(self.run_dir)[: -self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)
        for stale in self.run_dir.glob(".tmp-checkpoint-*"):  # left by a crash mid-write
            shutil.rmtree(stale, ignore_errors=True)


def load_resume_state(checkpoint: Path, *, rank: int, model, optimizer, scheduler) -> dict:
    """Restore trainable weights, optimizer, scheduler and this rank's RNG; return the trainer state."""
    state = json.loads((checkpoint / STATE_NAME).read_text())
    load_trainable_state(model, checkpoint / TRAINABLE_NAME)
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    rng_path = checkpoint / f"rng_state_{rank}.pt"
    if rng_path.is_file():
        restore_rng_state(torch.load(rng_path, weights_only=True))
    else:
        logger.warning("no RNG state for rank %d in %s (world size changed?): continuing with fresh RNG", rank, checkpoint)
    return state
