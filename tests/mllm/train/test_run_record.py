"""The run record a checkpoint carries: what identifies the data cheaply, and which differences block a resume."""
from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from mllm.train.run_record import (
    ResumeMismatchError,
    carried_position,
    check_resume,
    data_fingerprint,
    run_record,
)


def _record(data, **overrides):
    config = SimpleNamespace(micro_batch_size=2, global_batch_size=8, seed=1, group_by_modality_length=True)
    for key, value in overrides.items():
        setattr(config, key, value)
    return run_record(config, world_size=2, gradient_accumulation_steps=config.global_batch_size // (2 * config.micro_batch_size),
                      data=data)


def test_moved_data_is_the_same_data_but_edited_data_is_not(tmp_path):
    data = tmp_path / "a.json"
    data.write_bytes(b"[" + b'{"id": 1},' * 300_000 + b'{"id": 2}]')  # ~3 MB: sampled, not read whole
    moved = tmp_path / "elsewhere.json"
    shutil.copy(data, moved)
    saved = _record(data_fingerprint(data))
    assert check_resume({"run": saved}, _record(data_fingerprint(moved)), tmp_path, accept=False) == []
    edited = bytearray(data.read_bytes())
    edited[-5] = ord("3")  # same size, one byte changed at the end
    moved.write_bytes(bytes(edited))
    with pytest.raises(ResumeMismatchError, match="data file content"):
        check_resume({"run": saved}, _record(data_fingerprint(moved)), tmp_path, accept=False)


def test_every_difference_is_named_and_the_flag_accepts_them(tmp_path):
    data = tmp_path / "a.json"
    data.write_text("[]")
    saved = _record(data_fingerprint(data))
    now = _record(data_fingerprint(data), micro_batch_size=1, seed=3)
    with pytest.raises(ResumeMismatchError) as caught:
        check_resume({"run": saved}, now, tmp_path / "checkpoint-7", accept=False)
    message = str(caught.value)
    for named in ("micro_batch_size (checkpoint 2, this run 1)", "gradient_accumulation_steps (checkpoint 2, this run 4)",
                  "seed (checkpoint 1, this run 3)", "--resume_ignore_mismatch", "checkpoint-7"):
        assert named in message
    assert "global_batch_size" not in message and "world_size" not in message
    assert len(check_resume({"run": saved}, now, tmp_path, accept=True)) == 3
    # 10 micro-batches of 2 samples on 2 ranks = 40 samples seen = 20 micro-batches of 1 on 2 ranks
    assert carried_position(10, saved, now) == 20


def test_checkpoints_without_a_record_still_check_the_process_count(tmp_path):
    now = _record({})
    with pytest.raises(ResumeMismatchError, match=r"world_size \(checkpoint 4, this run 2\)"):
        check_resume({"world_size": 4}, now, tmp_path, accept=False)
