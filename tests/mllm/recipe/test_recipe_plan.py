"""The recipe file, its plan (steps, the commands they run, the estimates) and the runner's skip/refuse rules,
without training anything."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mllm.cli import main as cli_main
from mllm.errors import UserError
from mllm.recipe.config import PAPER_RECIPE, RecipeError, apply_overrides, load_recipe, recipe_from_dict
from mllm.recipe.estimates import lora_params, projector_params
from mllm.recipe.plan import build_plan
from mllm.recipe.runner import RecipeRunner, StepFailed, marker_path, step_state, write_marker
from mllm.train.config import build_parser, resolve_config

PAPER_BENCHMARKS = ["vqav2", "gqa", "vizwiz", "sqa", "textvqa", "pope", "mme", "mmbench", "mmbench_cn", "seed",
                    "llavabench", "mmvet"]


def _paper(**overrides):
    return apply_overrides(load_recipe(), **overrides)


def _train_config(step):
    """What the training command will run with: its own parser and preset resolution on the step's arguments."""
    args = build_parser("t", "t").parse_args(step.args)
    return resolve_config(step.command, args, step.command)


def test_paper_plan_is_both_towers_through_every_step_then_compare():
    steps = build_plan(_paper())
    per_tower = ("stage1", "stage2", *(f"eval/{b}" for b in PAPER_BENCHMARKS))
    assert [s.id for s in steps] == [f"{t}/{x}" for t in ("clip", "llm2clip") for x in per_tower] + ["compare"]
    clip1, clip2, llm2clip2 = steps[0], steps[1], steps[15]
    c = _train_config(clip1)
    assert (c.stage, c.tower, c.tower_checkpoint, c.learning_rate, c.global_batch_size) == (
        "pretrain", "openai-clip-vit-l-14-336", "openai/clip-vit-large-patch14-336", 1e-3, 256)
    assert c.data_path == "playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json"
    assert c.output_dir == "runs/paper/clip/stage1"
    c = _train_config(llm2clip2)
    assert (c.stage, c.tower, c.tower_checkpoint, c.mode, c.lora_r, c.lora_alpha) == (
        "finetune", "llm2clip-eva02-l-14-336", "microsoft/LLM2CLIP-EVA02-L-14-336", "auto", 128, 256)
    assert c.pretrained_projector == "runs/paper/llm2clip/stage1" and c.data_path.endswith("llava_v1_5_mix665k.json")
    assert clip2.meta["mode"] == "qlora"  # auto on a GPU
    # eval steps read the stage-2 model and write where compare looks
    pope = next(s for s in steps if s.id == "llm2clip/eval/pope")
    assert pope.args[:6] == ["--model", "runs/paper/llm2clip/stage2", "--benchmark", "pope", "--data",
                             "playground/data/eval/pope"]
    assert "--label" in pope.args and pope.args[pope.args.index("--label") + 1] == "LLM2CLIP"
    compare = steps[-1]
    assert compare.args[:2] == ["OpenAI CLIP=runs/paper/clip/eval", "LLM2CLIP=runs/paper/llm2clip/eval"]
    assert ["--metric", "mme:cognition"] == compare.args[-2:]
    assert {s.fingerprint for s in steps[:2]} != {s.fingerprint for s in steps[14:16]}


def test_estimates_follow_llava_published_times():
    steps = {s.id: s for s in build_plan(_paper())}
    # LLaVA-1.5-7B: stage 1 3.5 h and stage 2 10 h on 8 A100s over the full data sets
    assert steps["clip/stage1"].estimate.gpu_hours == pytest.approx(28.0)
    assert steps["clip/stage2"].estimate.gpu_hours == pytest.approx(80.0)
    assert "assumed = full fine-tuning" in steps["clip/stage2"].estimate.basis
    # 13B: the 13B reference (5.5 h x 8), not 7B scaled
    big = dataclasses.replace(_paper(), llm_size=dataclasses.replace(_paper().llm_size, params_b=13.0))
    assert build_plan(big)[0].estimate.gpu_hours == pytest.approx(44.0)
    # fewer samples: max_steps x global batch
    short = dataclasses.replace(_paper(), train={"max_steps": 100})
    plan = {s.id: s for s in build_plan(short)}
    assert plan["clip/stage1"].estimate.gpu_hours == pytest.approx(28.0 * 100 * 256 / 558_128)
    # disk: a LoRA r128 adapter on Vicuna-7B is ~320 M parameters (LLaVA's finetune_lora), the projector ~21 M
    assert lora_params(_paper().llm_size, 128) == pytest.approx(320e6, rel=0.01)
    assert projector_params(_paper().llm_size) == pytest.approx(21.0e6, rel=0.01)
    assert plan["clip/stage2"].estimate.disk_gb > 10 * plan["clip/stage1"].estimate.disk_gb
    assert all(not math.isnan(s.estimate.gpu_hours) for s in plan.values())


def test_overrides_and_one_line_errors(tmp_path):
    config = _paper(towers=["llm2clip"], benchmarks=["pope", "mme"], num_processes=8, data_root="/data",
                    output_dir=str(tmp_path / "out"))
    steps = build_plan(config)
    assert [s.id for s in steps] == ["llm2clip/stage1", "llm2clip/stage2", "llm2clip/eval/pope",
                                     "llm2clip/eval/mme"]  # one tower: nothing to compare
    assert steps[0].num_processes == 8 and steps[0].estimate.gpu_hours == pytest.approx(28.0)
    with pytest.raises(RecipeError, match="unknown tower"):
        _paper(towers=["siglip"])
    with pytest.raises(RecipeError, match="unknown benchmark"):
        _paper(benchmarks=["mmmu"])
    with pytest.raises(RecipeError, match="--stage2 'qlora'"):
        _paper(stage2_preset="qlora")
    raw = yaml.safe_load(PAPER_RECIPE.read_text())
    with pytest.raises(RecipeError, match=r"stage1: unknown key\(s\) \['lr'\]"):
        recipe_from_dict({**raw, "stage1": {**raw["stage1"], "lr": 1}})
    with pytest.raises(RecipeError, match="at least two towers"):
        recipe_from_dict({**raw, "towers": raw["towers"][:1]})
    with pytest.raises(RecipeError, match=r"missing key\(s\) \['llm'\]"):
        recipe_from_dict({k: v for k, v in raw.items() if k != "llm"})


def test_reproduce_command_dry_run_and_bad_preset(tmp_path, capsys):
    assert cli_main(["reproduce", "--dry-run", "--output-dir", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "29 steps (0 done, 29 to run)" in out and "llm2clip/eval/mmvet" in out
    assert "LLaVA-1.5-7B stage 1 published time" in out
    assert not (tmp_path / "o").exists()  # a plan writes nothing
    tiny = tmp_path / "bad.yaml"
    raw = yaml.safe_load(PAPER_RECIPE.read_text())
    tiny.write_text(yaml.safe_dump({**raw, "stage2": {**raw["stage2"], "preset": "no_such_preset"}}))
    assert cli_main(["reproduce", "--config", str(tiny), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "preset 'no_such_preset' not found" in err[0]


def test_finished_step_skipped_changed_step_refused(tmp_path):
    config = _paper(output_dir=str(tmp_path / "out"), benchmarks=["pope"])
    steps = build_plan(config)
    out = Path(config.output_dir)
    assert step_state(out, steps[0]) == "todo"
    write_marker(out, steps[0], {"fingerprint": steps[0].fingerprint, "finished": "t", "seconds": 1.0})
    assert step_state(out, steps[0]) == "done"
    (steps[2].output).mkdir(parents=True)
    (steps[2].output / "cache.jsonl").write_text("{}\n")
    assert step_state(out, steps[2]) == "resume"  # eval: cached answers will be reused
    RecipeRunner(out, steps).check_unchanged()
    # the same step with another learning rate is a different command: refused, naming the step
    changed = build_plan(dataclasses.replace(config, train={"learning_rate": 5e-4}))
    assert step_state(out, changed[0]) == "changed"
    with pytest.raises(UserError, match="clip/stage1 ran with other settings"):
        RecipeRunner(out, changed).check_unchanged()
    json.loads(next((out / ".recipe").glob("*.json")).read_text())  # markers are plain JSON


def test_multi_process_training_runs_under_accelerate_launch_and_marks_only_success(tmp_path, monkeypatch):
    config = _paper(output_dir=str(tmp_path / "out"), benchmarks=["pope"], num_processes=8)
    step = build_plan(config)[0]
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 1)  # the launch fails
    with pytest.raises(StepFailed, match="clip/stage1 failed"):
        RecipeRunner(config.output_dir, [step]).run()
    assert not marker_path(Path(config.output_dir), step).exists()  # a failed step is not finished
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    [result] = RecipeRunner(config.output_dir, [step]).run()
    assert result.status == "ran" and marker_path(Path(config.output_dir), step).is_file()
    cmd = calls[-1]
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[3:8] == ["--num_processes", "8", "-m", "mllm.cli", "pretrain"] and cmd[8:] == step.args


def test_eval_reads_llavas_question_files_once_eval_zip_is_extracted(tmp_path):
    config = _paper(data_root=str(tmp_path), benchmarks=["gqa", "mmbench"])
    data_of = lambda: {s.id: s.args[s.args.index("--data") + 1] for s in build_plan(config) if s.command == "eval"}  # noqa: E731
    assert data_of()["clip/eval/gqa"] == f"{tmp_path}/eval/gqa/data"  # GQA's own files
    (tmp_path / "eval" / "gqa").mkdir(parents=True)
    (tmp_path / "eval" / "gqa" / "llava_gqa_testdev_balanced.jsonl").write_text("{}\n")
    assert data_of()["clip/eval/gqa"] == f"{tmp_path}/eval/gqa"  # eval.zip's folder: LLaVA's prompts
    assert data_of()["clip/eval/mmbench"] == f"{tmp_path}/eval/mmbench/mmbench_dev_20230712.tsv"
