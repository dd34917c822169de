"""Training behaviour: learning, exact gradient accumulation, NaN stop, checkpoint retention, configuration."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mllm.train.config import TrainConfig, build_parser, resolve_config


def _projector(run_dir):
    return load_file(str(run_dir / "projector" / "projector.safetensors"))


def test_stage1_learns_and_stage2_builds_on_it(train_env, cli, tmp_path):
    out = tmp_path / "pretrain"
    cli.run(["pretrain", *cli.args(train_env, out, max_steps=12, save_steps=0, learning_rate=1e-2,
                                   global_batch_size=4, micro_batch_size=4)])
    log = (out / "train.log").read_text()
    losses = [float(line.split(" loss ")[1].split()[0]) for line in log.splitlines() if " step " in line and " loss " in line]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.4, losses
    stage1 = _projector(out)
    fin = tmp_path / "finetune"
    cli.run(["finetune", *cli.args(train_env, fin, max_steps=1, save_steps=0, pretrained_projector=out,
                                   learning_rate=0.0, projector_lr=0.0)])
    stage2 = _projector(fin)
    assert all(torch.equal(stage1[k], stage2[k]) for k in stage1)  # lr 0: the stage-1 projector carried over


def test_gradient_accumulation_is_exact(train_env, cli, tmp_path):
    """global batch 4 as 1x4 or 2x2 micro-batches: the same token-weighted loss, the same weights."""
    common = dict(max_steps=2, save_steps=0, lora_dropout=0.0, global_batch_size=4)
    cli.run(["finetune", *cli.args(train_env, tmp_path / "ga1", micro_batch_size=4, **common)])
    cli.run(["finetune", *cli.args(train_env, tmp_path / "ga2", micro_batch_size=2, **common)])
    a, b = _projector(tmp_path / "ga1"), _projector(tmp_path / "ga2")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    def grad_norms(run):
        log = (tmp_path / run / "train.log").read_text()
        return [float(line.split(" grad_norm ")[1].split()[0]) for line in log.splitlines() if " grad_norm " in line]

    # the gradient itself (not only Adam's scale-free update) must match: a 1/GA scaling bug shows here
    assert grad_norms("ga1") == pytest.approx(grad_norms("ga2"), rel=1e-4)
    la = json.loads((tmp_path / "ga1" / "training_summary.json").read_text())["final_loss"]
    lb = json.loads((tmp_path / "ga2" / "training_summary.json").read_text())["final_loss"]
    assert abs(la - lb) < 1e-4


def test_non_finite_loss_stops_naming_step_and_samples(train_env, cli, tmp_path):
    done = cli.run(["pretrain", *cli.args(train_env, tmp_path / "nan", max_steps=4, save_steps=0, learning_rate=1e30,
                                          max_grad_norm=0, warmup_ratio=0)], check=False)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]  # one line, after the progress bar
    assert last.startswith("llm2clip-llava pretrain: error: non-finite loss at optimizer step 2")
    assert "on samples ['s" in last and "Traceback" not in done.stderr


def test_keeps_only_the_last_checkpoints(train_env, cli, tmp_path):
    out = tmp_path / "keep"
    cli.run(["pretrain", *cli.args(train_env, out, max_steps=5, save_steps=1, save_total_limit=2)])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]


def test_presets_reproduce_llava_15_recipe():
    parser = build_parser("x", "y")
    pre = resolve_config("pretrain", parser.parse_args([]), "pretrain")
    assert (pre.mode, pre.learning_rate, pre.global_batch_size, pre.num_train_epochs, pre.warmup_ratio,
            pre.lr_scheduler, pre.weight_decay, pre.model_max_length, pre.template) == (
        "projector", 1e-3, 256, 1, 0.03, "cosine", 0.0, 2048, "plain")
    fin = resolve_config("finetune", parser.parse_args([]), "finetune")
    assert (fin.lora_r, fin.lora_alpha, fin.lora_dropout, fin.learning_rate, fin.projector_lr, fin.global_batch_size,
            fin.template, fin.lora_target_modules) == (128, 256, 0.05, 2e-4, 2e-5, 128, "vicuna_v1", "all-linear")
    assert fin.resolved_mode(on_cuda=True) == "qlora" and fin.resolved_mode(on_cuda=False) == "lora"
    over = resolve_config("finetune", parser.parse_args(["--lora_r", "8", "--tower", "null", "--report_to", "tensorboard"]),
                          "finetune")
    assert over.lora_r == 8 and over.tower is None and over.report_to == ["tensorboard"]


def test_gradient_accumulation_derivation():
    cfg = TrainConfig(global_batch_size=128, micro_batch_size=4)
    assert cfg.gradient_accumulation_steps(1) == 32 and cfg.gradient_accumulation_steps(8) == 4
    with pytest.raises(ValueError, match="not a multiple"):
        cfg.gradient_accumulation_steps(3)


def test_unknown_preset_field_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rat: 0.1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        resolve_config("finetune", build_parser("x", "y").parse_args(["--config", str(bad)]), "finetune")


def test_a_second_run_in_one_process_does_not_write_into_the_first_runs_log(tmp_path):
    """Two train() calls in one process (the paper recipe runs both towers' stages in-process): each run's
    train.log holds its own lines only."""
    import logging

    from mllm.train.trainer import _log_to_file

    first, second = tmp_path / "a.log", tmp_path / "b.log"
    log = logging.getLogger("mllm.train.example")
    _log_to_file(first)
    log.info("line of run one")
    _log_to_file(second)
    log.info("line of run two")
    for handler in [h for h in logging.getLogger("mllm").handlers if getattr(h, "_llm2clip_run_log", False)]:
        handler.flush()
    assert "run one" in first.read_text() and "run two" not in first.read_text()
    assert "run two" in second.read_text() and "run one" not in second.read_text()
