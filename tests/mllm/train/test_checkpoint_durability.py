"""Crash safety of checkpoint writes, pruning and the final model: stopped between every durable step, the
run directory always recovers to a complete, resumable state (never a partial checkpoint or a mixed model)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mllm.train.checkpointing import (
    CheckpointReadError,
    CheckpointWriter,
    NonFiniteWeightsError,
    load_resume_state,
)
from mllm.train.final_model import publish_model
from mllm.train.rundir import (
    RunDirError,
    apply_plan,
    list_checkpoints,
    plan_run_dir,
    scan,
    verify_checkpoint_files,
)


class Crash(Exception):
    """Raised by a step hook: the process 'dies' right after that durable step."""


class Run:
    """A one-layer model with AdamW and a scheduler, checkpointed by the real CheckpointWriter."""

    def __init__(self, run_dir: Path, keep_last: int = 0, step_hook=None):
        self.run_dir = run_dir
        self.model = torch.nn.Linear(3, 2)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0)
        self.writer = CheckpointWriter(run_dir, rank=0, world_size=1, barrier=lambda: None, keep_last=keep_last,
                                       step_hook=step_hook)

    def train_step(self):
        self.model(torch.ones(1, 3)).sum().backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()

    def save(self, step: int) -> Path:
        def save_model(directory: Path):  # stands in for save_pretrained: a manifest and one part
            (directory / "config.json").write_text(json.dumps({"contents": {"projector": "projector"},
                                                               "extra": {"train_steps": step}}))
            (directory / "projector").mkdir()
            (directory / "projector" / "w.txt").write_text(str(step))

        return self.writer.save(step, save_model=save_model, model=self.model, optimizer=self.optimizer,
                                scheduler=self.scheduler, trainer_state={"step": step, "epoch": 0,
                                                                         "bias0": self.model.bias[0].item()})


def _hook_at(name: str, nth: int = 1):
    seen = []

    def hook(step_name):
        if step_name == name:
            seen.append(step_name)
            if len(seen) == nth:
                raise Crash(step_name)

    return hook


def _resume(run_dir: Path) -> tuple[int, dict]:
    """What a restarted run does: plan (read only), recover as the main process, load the latest checkpoint."""
    plan = plan_run_dir(run_dir, run_dir, overwrite=False)
    apply_plan(plan)
    verify_checkpoint_files(plan.resume_checkpoint)
    fresh = Run(run_dir)
    state = load_resume_state(plan.resume_checkpoint, rank=0, model=fresh.model, optimizer=fresh.optimizer,
                              scheduler=fresh.scheduler)
    assert fresh.model.bias[0].item() == pytest.approx(state["bias0"])  # weights and state of one and the same step
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers
    return plan.resume_step, state


SAVE_STEPS = ["written", "synced", "swapped"]  # a new step: no old copy to set aside
REPLACE_STEPS = ["written", "synced", "old_moved_aside", "swapped", "old_deleted"]
PRUNE_STEPS = ["renamed_for_deletion", "pruned"]


@pytest.mark.parametrize("crash_at", SAVE_STEPS + PRUNE_STEPS)
def test_crash_while_saving_a_new_checkpoint_leaves_a_resumable_run(tmp_path, crash_at):
    run = Run(tmp_path, keep_last=1)
    for step in (1, 2):
        run.train_step()
        run.save(step)
    run.writer.step_hook = _hook_at(crash_at)
    run.train_step()
    with pytest.raises(Crash):
        run.save(3)
    step, _ = _resume(tmp_path)
    expected = {"written": [2], "synced": [2], "swapped": [2, 3], "renamed_for_deletion": [3], "pruned": [3]}
    assert [s for s, _ in list_checkpoints(tmp_path)] == expected[crash_at]
    assert step == expected[crash_at][-1]


@pytest.mark.parametrize("crash_at", REPLACE_STEPS)
def test_crash_while_replacing_a_checkpoint_keeps_one_complete_copy(tmp_path, crash_at):
    run = Run(tmp_path)
    run.train_step()
    run.save(1)
    run.writer.step_hook = _hook_at(crash_at)
    run.train_step()  # the same step saved again with other content (a resumed run re-saving its last step)
    with pytest.raises(Crash):
        run.save(1)
    step, _ = _resume(tmp_path)
    assert step == 1
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]


def test_pruning_never_removes_the_checkpoint_just_written(tmp_path):
    old = Run(tmp_path / "run")
    for step in (900, 1000):  # an older run's checkpoints in the same directory
        old.save(step)
    new = Run(tmp_path / "run", keep_last=2)
    new.save(100)
    assert (tmp_path / "run" / "checkpoint-100").is_dir()
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [100, 900, 1000]  # later ones are not its to prune


@pytest.mark.parametrize("crash_at", ["model_synced", "old_manifest_removed", "parts_swapped", "manifest_swapped"])
@pytest.mark.parametrize("had_model", [False, True])
def test_final_model_is_published_atomically(tmp_path, crash_at, had_model):
    def write(step):
        def write_into(directory: Path):
            (directory / "config.json").write_text(json.dumps({"contents": {"projector": "projector", "tokenizer": "tokenizer"},
                                                               "extra": {"train_steps": step}}))
            for part in ("projector", "tokenizer"):
                (directory / part).mkdir()
                (directory / part / "w.txt").write_text(str(step))
        return write_into

    if had_model:
        publish_model(tmp_path, write(1))
    with pytest.raises(Crash):
        publish_model(tmp_path, write(2), step_hook=_hook_at(crash_at))
    # right after the crash: a loadable manifest always describes parts of its own step
    manifest = tmp_path / "config.json"
    if manifest.exists():
        step = json.loads(manifest.read_text())["extra"]["train_steps"]
        assert all((tmp_path / p / "w.txt").read_text() == str(step) for p in ("projector", "tokenizer"))
    Run(tmp_path).save(2)  # recovery needs a checkpoint to resume from
    _resume(tmp_path)
    step = json.loads(manifest.read_text())["extra"]["train_steps"]
    assert step == 2  # the model was complete and synced before any swap began: recovery rolls it forward
    assert all((tmp_path / p / "w.txt").read_text() == "2" for p in ("projector", "tokenizer"))


def test_reused_output_dir_is_refused_and_overwrite_replaces_it(tmp_path):
    old = Run(tmp_path)
    for step in (900, 1000):
        old.save(step)
    with pytest.raises(RunDirError, match=r"already holds a training run \(checkpoint-900, checkpoint-1000\).*"
                                          r"--resume_from .*--overwrite_output_dir"):
        plan_run_dir(tmp_path, None, overwrite=False)
    with pytest.raises(RunDirError, match="--overwrite_output_dir would delete"):
        plan_run_dir(tmp_path, tmp_path, overwrite=True)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-other"
    with pytest.raises(RunDirError, match="holds another run"):
        plan_run_dir(tmp_path, Run(elsewhere).save(5), overwrite=False)
    apply_plan(plan_run_dir(tmp_path, None, overwrite=True))
    assert list_checkpoints(tmp_path) == [] and not scan(tmp_path).holds_a_run


def test_resume_sets_later_checkpoints_and_model_aside(tmp_path):
    run = Run(tmp_path)
    for step in (1, 2, 3):
        run.save(step)
    publish_model(tmp_path, lambda d: (d / "config.json").write_text(json.dumps({"extra": {"train_steps": 3}})))
    plan = plan_run_dir(tmp_path, tmp_path / "checkpoint-1", overwrite=False)
    assert (plan.resume_step, plan.supersede_steps, plan.supersede_model) == (1, [2, 3], True)
    apply_plan(plan)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    aside = list(tmp_path.glob("superseded-*-after-step-1"))
    assert len(aside) == 1
    assert sorted(p.name for p in aside[0].iterdir()) == ["checkpoint-2", "checkpoint-3", "config.json"]
    assert (aside[0] / "checkpoint-3" / "trainer_state.json").is_file()  # moved, not deleted


def test_damaged_state_files_are_named(tmp_path):
    run = Run(tmp_path)
    run.save(1)
    run.save(2)
    ckpt = tmp_path / "checkpoint-2"
    for name, damage in [("optimizer.pt", "truncate"), ("trainable.safetensors", "truncate"),
                         ("optimizer.pt", "flip"), ("scheduler.pt", "garbage"), ("rng_state_0.pt", "flip"),
                         ("trainer_state.json", "garbage")]:
        original = (ckpt / name).read_bytes()
        if damage == "truncate":
            (ckpt / name).write_bytes(original[: len(original) // 2])
        elif damage == "garbage":
            (ckpt / name).write_bytes(b"\x80\x02}q\x00(X\x01")  # a cut legacy pickle: "unpack requires ..." on main
        else:  # bytes changed inside a structurally intact archive: only a real load notices
            data = bytearray(original)
            data[60:90] = bytes(30)
            (ckpt / name).write_bytes(bytes(data))
        fresh = Run(tmp_path)
        with pytest.raises((RunDirError, CheckpointReadError)) as caught:
            verify_checkpoint_files(ckpt)
            load_resume_state(ckpt, rank=0, model=fresh.model, optimizer=fresh.optimizer, scheduler=fresh.scheduler)
        message = str(caught.value)
        assert name in message and "\n" not in message, message
        assert "--resume_from" in message and "checkpoint-1" in message  # points at the intact earlier one
        (ckpt / name).write_bytes(original)


def test_non_finite_weights_are_never_written(tmp_path):
    run = Run(tmp_path)
    run.save(1)
    with torch.no_grad():
        run.model.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="weight"):
        run.save(2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
