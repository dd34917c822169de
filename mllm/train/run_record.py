"""What a checkpoint must agree on with the run that resumes it, recorded in every checkpoint.

Resuming is exact only when the data, the process count, the batch geometry and the seed are the same:
otherwise the sampler replays a different order from a position that means something else, silently. Every
checkpoint's trainer state carries a `run` record; a resume compares it with the new run and refuses, naming
each difference, unless `--resume_ignore_mismatch` accepts them (then the data position is carried over as a
count of samples). The data file is identified cheaply: size, number of records, and a SHA-256 over its
size and three 1 MiB samples (start, middle, end); its path and mtime are recorded for the reader only,
since moving or copying the file is harmless. Torch-free.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from ..errors import UserError

logger = logging.getLogger(__name__)

_SAMPLE = 1 << 20
# keys that must agree; the data fingerprint is compared by its size/records/hash
COMPARED = ("world_size", "micro_batch_size", "global_batch_size", "gradient_accumulation_steps", "seed",
            "group_by_modality_length")
DATA_COMPARED = ("size", "records", "sampled_sha256")


class ResumeMismatchError(UserError):
    """The checkpoint was written by a run that differs from this one; the message names every difference."""


def data_fingerprint(path: str | os.PathLike, records: int | None = None) -> dict:
    """Identify a data file without reading all of it (a 1 GB LLaVA JSON costs three 1 MiB reads)."""
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha256(str(stat.st_size).encode())
    with open(path, "rb") as handle:
        for offset in sorted({0, max(0, stat.st_size // 2 - _SAMPLE // 2), max(0, stat.st_size - _SAMPLE)}):
            handle.seek(offset)
            digest.update(handle.read(_SAMPLE))
    fingerprint = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                   "sampled_sha256": digest.hexdigest()}
    if records is not None:
        fingerprint["records"] = records
    return fingerprint


def run_record(config, *, world_size: int, gradient_accumulation_steps: int, data: dict) -> dict:
    return {
        "world_size": world_size,
        "micro_batch_size": config.micro_batch_size,
        "global_batch_size": config.global_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "seed": config.seed,
        "group_by_modality_length": config.group_by_modality_length,
        "data": data,
    }


def differences(saved: dict, current: dict) -> list[str]:
    """Each setting that differs, as `name (checkpoint X, this run Y)`; keys missing on either side are skipped."""
    out = []
    for key in COMPARED:
        if key in saved and key in current and saved[key] != current[key]:
            out.append(f"{key} (checkpoint {saved[key]}, this run {current[key]})")
    saved_data, data = saved.get("data") or {}, current.get("data") or {}
    for key in DATA_COMPARED:
        if key in saved_data and key in data and saved_data[key] != data[key]:
            what = "content" if key == "sampled_sha256" else key
            out.append(f"data file {what} (checkpoint {_short(saved_data[key])} in {saved_data.get('path')}, "
                       f"this run {_short(data[key])} in {data.get('path')})")
    return out


def _short(value):
    return value[:12] if isinstance(value, str) and len(value) == 64 else value


def check_resume(saved_state: dict, current: dict, checkpoint: Path, *, accept: bool) -> list[str]:
    """Refuse a resume whose run record differs (or warn and return the differences when `accept`)."""
    saved = saved_state.get("run")
    if saved is None:  # written before run records existed: only the process count is known
        saved = {"world_size": saved_state["world_size"]} if "world_size" in saved_state else {}
        logger.warning("%s has no run record (written by an older version): data and batch settings cannot "
                       "be checked", checkpoint)
    found = differences(saved, current)
    if found and not accept:
        raise ResumeMismatchError(
            f"cannot resume from {checkpoint}: this run differs in {'; '.join(found)}. Use the checkpoint's "
            "settings, or pass --resume_ignore_mismatch to continue anyway")
    if found:
        logger.warning("resuming from %s despite differences (--resume_ignore_mismatch): %s", checkpoint,
                       "; ".join(found))
    return found


def carried_position(micro_batches_in_epoch: int, saved: dict, current: dict) -> int:
    """The position in the epoch in this run's micro-batches, keeping the number of samples already seen."""
    try:
        seen = micro_batches_in_epoch * saved["micro_batch_size"] * saved["world_size"]
    except (KeyError, TypeError):
        return micro_batches_in_epoch
    return seen // (current["micro_batch_size"] * current["world_size"])
