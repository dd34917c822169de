"""The training commands as a user meets them: reused run directories, resuming a different run, damaged
checkpoints and wrong arguments each end in one line (exit 2) before any model loads; resuming sets later
state aside instead of mixing two runs; log lines never land inside the progress bar."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from mllm.train.checkpointing import find_resume_checkpoint, list_checkpoints

# Runs the console script in-process and reports whether anything imported torch (a model load needs it).
PROBE = ("import sys; from mllm.cli import main; rc = main(sys.argv[1:]); "
         "print('torch imported' if 'torch' in sys.modules else 'torch not imported'); sys.exit(rc)")


def _probe(args):
    return subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, check=False)


def _one_line_error(done, command="pretrain") -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"llm2clip-llava {command}: error: "), done.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def base_run(train_env, tmp_path_factory):
    """A finished 4-step stage-1 run keeping every checkpoint (1..4), and its stderr."""
    from .conftest import base_args, run_cli

    out = tmp_path_factory.mktemp("base_run") / "run"
    done = run_cli(["pretrain", *base_args(train_env, out, max_steps=4, save_steps=1, save_total_limit=0)])
    return out, done.stderr


def _copy(base_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base_run[0], run)
    return run


def _tree(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*"))


def test_reused_output_dir_is_refused_then_overwritten(train_env, cli, base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    (run / "checkpoint-3").rename(run / "checkpoint-900")  # an older, longer run's checkpoints
    (run / "checkpoint-4").rename(run / "checkpoint-1000")
    before = _tree(run)
    done = cli.run(["pretrain", *cli.args(train_env, run, max_steps=2, save_steps=1, save_total_limit=2)], check=False)
    line = _one_line_error(done)
    assert "already holds a training run" in line and "checkpoint-1000" in line
    assert f"--resume_from {run}" in line and "--overwrite_output_dir" in line
    assert _tree(run) == before  # nothing touched
    cli.run(["pretrain", *cli.args(train_env, run, max_steps=2, save_steps=1, save_total_limit=2), "--overwrite_output_dir"])
    assert [s for s, _ in list_checkpoints(run)] == [1, 2]  # the new run's checkpoints survive its own pruning
    assert find_resume_checkpoint(run) == run / "checkpoint-2"  # and resuming the dir resumes the new run
    assert json.loads((run / "config.json").read_text())["extra"]["train_steps"] == 2


def test_resume_sets_later_checkpoints_aside(train_env, cli, base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    done = cli.run(["pretrain", *cli.args(train_env, run, max_steps=3, save_steps=1, save_total_limit=0,
                                          resume_from=run / "checkpoint-2")])
    assert "resumed from" in done.stderr
    assert [s for s, _ in list_checkpoints(run)] == [1, 2, 3]
    (aside,) = run.glob("superseded-*-after-step-2")
    assert (aside / "checkpoint-4" / "trainer_state.json").is_file()  # moved, not deleted
    assert json.loads((aside / "config.json").read_text())["extra"]["train_steps"] == 4  # the old final model too
    assert json.loads((run / "config.json").read_text())["extra"]["train_steps"] == 3
    assert json.loads((run / "training_summary.json").read_text())["steps"] == 3
    assert find_resume_checkpoint(run) == run / "checkpoint-3"


def test_resume_refuses_a_different_run_naming_each_difference(train_env, cli, base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    records = json.loads(train_env["data"].read_text())
    other_data = tmp_path / "more.json"
    other_data.write_text(json.dumps(records + records[:2]))
    before = _tree(run)
    done = cli.run(["pretrain", *cli.args(train_env, run, max_steps=5, resume_from=run, data_path=other_data,
                                          micro_batch_size=1, seed=7)], check=False)
    line = _one_line_error(done)
    for named in ("micro_batch_size (checkpoint 2, this run 1)", "gradient_accumulation_steps (checkpoint 2, this run 4)",
                  "seed (checkpoint 42, this run 7)", "data file size", "data file content", "--resume_ignore_mismatch"):
        assert named in line, line
    assert _tree(run) == before

    done = cli.run(["pretrain", *cli.args(train_env, run, max_steps=5, resume_from=run, micro_batch_size=1),
                    "--resume_ignore_mismatch"])
    assert "despite differences" in done.stderr and "micro_batch_size (checkpoint 2, this run 1)" in done.stderr
    summary = json.loads((run / "training_summary.json").read_text())
    assert summary["steps"] == 5


def test_damaged_checkpoint_is_named_before_any_model_loads(train_env, cli, base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    optimizer = run / "checkpoint-4" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    done = _probe(["pretrain", *cli.args(train_env, run, max_steps=5, resume_from=run)])
    line = _one_line_error(done)
    assert "optimizer.pt is damaged" in line and f"--resume_from {run / 'checkpoint-3'}" in line
    assert done.stdout.strip() == "torch not imported"


def test_log_lines_never_interleave_with_the_progress_bar(base_run):
    stderr = base_run[1]
    records = [line for line in stderr.split("\n") if re.search(r"INFO mllm\.train\.metrics: step \d+ loss", line)]
    assert len(records) == 4
    for line in records:  # tqdm.write clears the bar first: the record starts the (carriage-return) line
        assert re.match(r"\d{4}-\d\d-\d\d ", line.split("\r")[-1]), repr(line[-300:])


@pytest.mark.parametrize("case", ["missing_data", "data_is_dir", "invalid_json", "not_a_list", "no_records",
                                  "image_folder", "projector_dir", "resume_dir",
                                  "output_dir", "negative_lr", "batch_split", "not_an_int", "scheduler"])
def test_user_errors_fail_in_one_line_before_torch(train_env, cli, tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    taken = tmp_path / "taken"
    (taken / "checkpoint-5").mkdir(parents=True)
    (taken / "checkpoint-5" / "trainer_state.json").write_text('{"step": 5}')
    (tmp_path / "truncated.json").write_text('[{"id": "a", "conversations": []}, {"id": ')
    (tmp_path / "object.json").write_text('{"id": "a", "conversations": []}')
    (tmp_path / "empty.jsonl").write_text("\n\n")
    overrides, expected = {
        "missing_data": ({"data_path": tmp_path / "missing.json"}, "missing.json does not exist"),
        "data_is_dir": ({"data_path": empty}, "is not a file"),
        "invalid_json": ({"data_path": tmp_path / "truncated.json"}, "truncated.json: not valid JSON"),
        "not_a_list": ({"data_path": tmp_path / "object.json"}, "must hold a list of records, got dict"),
        "no_records": ({"data_path": tmp_path / "empty.jsonl"}, "empty.jsonl holds no records"),
        "image_folder": ({"image_folder": tmp_path / "no_images"}, "--image_folder"),
        "projector_dir": ({"pretrained_projector": empty}, "holds no projector"),
        "resume_dir": ({"resume_from": empty}, "no complete checkpoint"),
        "output_dir": ({"output_dir": taken}, "already holds a training run (checkpoint-5)"),
        "negative_lr": ({"learning_rate": -1}, "--learning_rate must be >= 0"),
        "batch_split": ({"micro_batch_size": 3}, "not a multiple of micro_batch_size 3"),
        "not_an_int": ({"save_steps": "ten"}, "invalid int value: 'ten'"),
        "scheduler": ({"lr_scheduler": "cosine_annealing"}, "--lr_scheduler 'cosine_annealing' is not one of"),
    }[case]
    output_dir = overrides.pop("output_dir", tmp_path / "out")
    done = _probe(["finetune", *cli.args(train_env, output_dir, **overrides)])
    assert expected in _one_line_error(done, "finetune")
    assert done.stdout.strip() == "torch not imported"


def test_preflight_names_match_the_libraries():
    from transformers import SchedulerType

    import projector
    from mllm.train.preflight import PROJECTOR_FILES, SCHEDULERS

    assert PROJECTOR_FILES == (projector.PROJECTOR_WEIGHTS_NAME, projector.PROJECTOR_CONFIG_NAME)
    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}
