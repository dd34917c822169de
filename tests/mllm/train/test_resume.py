"""Resume after SIGKILL (mid-training, mid-checkpoint-write, between the durable steps of a checkpoint
replacement, a prune and the final-model swap) ends bit-identical to an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

# Runs training with checkpoint writes slowed down, so a test can kill the process while one is half written.
SLOW_WRITER = """
import sys, time
import mllm.train.checkpointing as ck
_orig = ck.save_file
def slow(*a, **k):
    time.sleep(float(sys.argv[1]))
    return _orig(*a, **k)
ck.save_file = slow
from mllm.cli import main
sys.exit(main(sys.argv[2:]))
"""


# Trains and SIGKILLs itself right after the n-th time a named durable step is reached (see mllm.train.durable).
KILL_AT_STEP = """
import functools, os, signal, sys
import mllm.train.trainer as trainer
name, nth, seen = sys.argv[1], int(sys.argv[2]), []
def hook(step):
    seen.extend([step] if step == name else [])
    if len(seen) == nth:
        os.kill(os.getpid(), signal.SIGKILL)
trainer.CheckpointWriter = functools.partial(trainer.CheckpointWriter, step_hook=hook)
trainer.publish_model = functools.partial(trainer.publish_model, step_hook=hook)
from mllm.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def reference(train_env, tmp_path_factory):
    from .conftest import base_args, run_cli

    out = tmp_path_factory.mktemp("resume") / "reference"
    run_cli(["finetune", *base_args(train_env, out)])
    return out


def _weights(run_dir):
    out = {}
    for part in ("projector/projector.safetensors", "adapter/adapter_model.safetensors"):
        for k, v in load_file(str(run_dir / part)).items():
            out[f"{part}:{k}"] = v
    return out


def _assert_bit_identical(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert wa[key].dtype == wb[key].dtype
        assert (wa[key].view(-1).view(dtype=__import__("torch").int32) == wb[key].view(-1).view(
            dtype=__import__("torch").int32)).all(), f"{key} differs"


def _popen(args, slow=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", SLOW_WRITER, str(slow or 0)] + args
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(path_predicate, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path_predicate():
            return True
        if proc.poll() is not None:
            raise AssertionError(f"training ended before the kill point: {proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError("kill point never reached")


@pytest.mark.slow
def test_sigkill_resume_bit_identical(train_env, cli, tmp_path, reference):

    # 1) killed mid-training, right after checkpoint-2 is complete
    killed = tmp_path / "killed_training"
    proc = _popen(["finetune", *cli.args(train_env, killed)])
    _wait_for(lambda: (killed / "checkpoint-2" / "trainer_state.json").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "training_summary.json").exists()
    cli.run(["finetune", *cli.args(train_env, killed, resume_from=killed)])
    _assert_bit_identical(reference, killed)

    # 2) killed while checkpoint-4 is being written: its temporary directory never becomes a checkpoint
    killed_io = tmp_path / "killed_in_write"
    proc = _popen(["finetune", *cli.args(train_env, killed_io)], slow=1.5)
    _wait_for(lambda: (killed_io / ".tmp-checkpoint-4").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_io / "checkpoint-4").exists()
    assert (killed_io / "checkpoint-2" / "trainer_state.json").exists()
    done = cli.run(["finetune", *cli.args(train_env, killed_io, resume_from=killed_io)])
    assert "resumed from" in done.stderr and "checkpoint-2" in done.stderr
    _assert_bit_identical(reference, killed_io)
    assert not list(killed_io.glob(".tmp-checkpoint-*"))
    summary = json.loads((killed_io / "training_summary.json").read_text())
    assert summary["steps"] == 6


def _killed_at(step_name: str, nth: int, args: list[str]) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", KILL_AT_STEP, step_name, str(nth), *args], capture_output=True,
                          text=True, env=env, check=False)
    assert done.returncode == -signal.SIGKILL, f"not killed at {step_name}: {done.stderr[-3000:]}"


@pytest.mark.slow
def test_sigkill_between_durable_steps_always_resumes(train_env, cli, tmp_path, reference):
    """Real SIGKILLs: mid-prune, mid-replacement of a checkpoint, mid-swap of the final model."""
    run = tmp_path / "run"
    # saves at steps 2, 4, 6 keeping 2: the save of step 6 prunes checkpoint-2; die once it is renamed for deletion
    _killed_at("renamed_for_deletion", 1, ["finetune", *cli.args(train_env, run)])
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert not (run / "config.json").exists()  # the final model was never published
    # resuming at the last step re-saves checkpoint-6 (a replacement): die with the old copy renamed aside
    _killed_at("old_moved_aside", 1, ["finetune", *cli.args(train_env, run, resume_from=run)])
    assert not (run / "checkpoint-6").exists() and (run / ".old-checkpoint-6" / "trainer_state.json").is_file()
    # again, now dying halfway through swapping the final model in: no manifest, so nothing loadable is mixed
    _killed_at("parts_swapped", 1, ["finetune", *cli.args(train_env, run, resume_from=run)])
    assert not (run / "config.json").exists() and (run / ".new-model" / "config.json").is_file()
    done = cli.run(["finetune", *cli.args(train_env, run, resume_from=run)])
    assert "checkpoint-6" in done.stderr
    _assert_bit_identical(reference, run)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
