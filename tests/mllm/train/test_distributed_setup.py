"""Decisions made before any weights load: engine/mode refusals, where each rank loads its LLM, which blocks FSDP
wraps, the precision of a fully trained LLM, and the exact-LLaVA presets field by field."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import mllm.train.trainer as trainer
from mllm.cli import main as cli_main
from mllm.train.config import PRESET_DIR, build_parser, resolve_config
from mllm.train.distributed import UnsupportedSetupError, plan_setup
from mllm.train.trainer import enable_tf32, keep_trainable_precision

CONFIGS = Path(trainer.__file__).resolve().parent.parent / "accelerate_configs"


def test_qlora_with_zero3_refused_naming_what_to_use():
    with pytest.raises(UnsupportedSetupError, match=r"ZeRO-3.*ZeRO-2 \(mllm/accelerate_configs/deepspeed_zero2.yaml\) or FSDP \(fsdp_qlora.yaml\)"):
        plan_setup("qlora", torch.bfloat16, engine="deepspeed", zero_stage=3)
    assert plan_setup("lora", torch.bfloat16, engine="deepspeed", zero_stage=3).quantization is None
    plan = plan_setup("qlora", torch.bfloat16, engine="fsdp", on_cuda=False)  # runs on CPU processes too
    assert plan.quantization == "4bit" and plan.quant_storage == torch.bfloat16
    plan = plan_setup("qlora", torch.float32, engine="none")
    assert plan.quantization == "4bit" and plan.quant_storage is None


def test_cli_refuses_before_any_model_loads(train_env, monkeypatch, capsys):
    """The launch environment of deepspeed_zero3.yaml + --mode qlora: one line, exit 2, nothing loaded."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the engine/mode check")

    monkeypatch.setattr(trainer, "build_model", must_not_load)
    code = cli_main(["finetune", "--mode", "qlora", "--llm", str(train_env["llm"]), "--data_path",
                     str(train_env["data"]), "--output_dir", "unused"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("llm2clip-llava finetune: error: QLoRA") and "ZeRO-2" in err[0], err


@pytest.mark.parametrize("engine, stage, expected", [
    ("none", None, {"": 3}), ("ddp", None, {"": 3}), ("deepspeed", 2, {"": 3}),
    ("deepspeed", 3, None),  # ZeRO-3 partitions the weights while loading
    ("fsdp", None, None),  # rank 0 loads, FSDP shards and broadcasts
])
def test_each_rank_loads_its_llm_onto_its_own_gpu(engine, stage, expected):
    """Unquantised modes too: no rank materialises the whole LLM on its CPU first."""
    for mode in ("lora", "full") + (("qlora",) if stage != 3 else ()):
        plan = plan_setup(mode, torch.bfloat16, engine=engine, zero_stage=stage, on_cuda=True, local_rank=3)
        assert plan.device_map == expected, mode
        assert plan_setup(mode, torch.float32, engine=engine, zero_stage=stage, on_cuda=False).device_map is None


def test_fsdp_wraps_decoder_layers_and_tower_blocks(make_tiny_model):
    model, _ = make_tiny_model()
    assert model._no_split_modules == ["LlamaDecoderLayer", "EvaBlock"]
    assert model.get_output_embeddings() is model.llm.get_output_embeddings()


def test_full_mode_keeps_the_llm_in_bf16_on_gpus(make_tiny_model):
    """fp32 weights + Adam would cost 16 bytes per LLM parameter; small trainable parts still train in fp32."""
    assert plan_setup("full", torch.bfloat16, engine="ddp", on_cuda=True).llm_stays_in_compute_dtype("full")
    assert not plan_setup("lora", torch.bfloat16, engine="ddp", on_cuda=True).llm_stays_in_compute_dtype("lora")
    assert not plan_setup("full", torch.float32, engine="none", on_cuda=False).llm_stays_in_compute_dtype("full")
    model, _ = make_tiny_model(dtype=torch.bfloat16, train_llm=True)
    keep_trainable_precision(model, keep_llm_dtype=True)
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.projector.parameters()} == {torch.float32}
    keep_trainable_precision(model, keep_llm_dtype=False)
    assert {p.dtype for p in model.llm.parameters()} == {torch.float32}


def test_tf32_only_on_cuda():
    before = torch.get_float32_matmul_precision()
    try:
        enable_tf32(True, on_cuda=False)
        assert torch.get_float32_matmul_precision() == before
        enable_tf32(True, on_cuda=True)
        assert torch.get_float32_matmul_precision() == "high"
        enable_tf32(False, on_cuda=True)
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


# haotian-liu/LLaVA scripts/v1_5/finetune_lora.sh and finetune.sh (8 GPUs), with train.py's and HF
# TrainingArguments' defaults for what they do not pass (lora_dropout 0.05, max_grad_norm 1.0, Adam betas).
LLAVA_COMMON = {
    "template": "vicuna_v1", "projector_type": "mlp2x_gelu", "select_layer": -2, "select_feature": "patch",
    "image_aspect_ratio": "pad", "group_by_modality_length": True, "dtype": "bf16", "tf32": True,
    "num_train_epochs": 1, "global_batch_size": 128, "micro_batch_size": 16, "weight_decay": 0.0,
    "warmup_ratio": 0.03, "lr_scheduler": "cosine", "model_max_length": 2048, "gradient_checkpointing": True,
    "num_workers": 4, "save_steps": 50000, "save_total_limit": 1, "logging_steps": 1, "max_grad_norm": 1.0,
    "adam_beta1": 0.9, "adam_beta2": 0.999, "loss_reduction": "per_device", "unfreeze_tower_blocks": 0,
    "stage": "finetune",
}
LLAVA_SCRIPTS = {
    "finetune_lora": {**LLAVA_COMMON, "mode": "lora", "lora_r": 128, "lora_alpha": 256, "lora_dropout": 0.05,
                      "lora_target_modules": "all-linear", "learning_rate": 2e-4, "projector_lr": 2e-5},
    "finetune_full": {**LLAVA_COMMON, "mode": "full", "learning_rate": 2e-5, "projector_lr": None},
}


@pytest.mark.parametrize("preset", sorted(LLAVA_SCRIPTS))
def test_exact_llava_presets_match_the_scripts(preset):
    config = resolve_config("finetune", build_parser("x", "y").parse_args(["--preset", preset]), "finetune")
    resolved = config.to_dict()
    mismatched = {k: (resolved[k], v) for k, v in LLAVA_SCRIPTS[preset].items() if resolved[k] != v}
    assert not mismatched, mismatched
    assert config.resolved_mode(on_cuda=True) == LLAVA_SCRIPTS[preset]["mode"]  # not the QLoRA default
    assert config.gradient_accumulation_steps(8) == 1  # 16 per GPU x 8 GPUs, as the scripts
    # both scripts run DeepSpeed ZeRO-3 (scripts/zero3.json: stage 3, bf16, 16-bit weights gathered on save)
    assert "deepspeed_zero3.yaml" in (PRESET_DIR / f"{preset}.yaml").read_text()
    zero3 = yaml.safe_load((CONFIGS / "deepspeed_zero3.yaml").read_text())
    assert zero3["deepspeed_config"]["zero_stage"] == 3 and zero3["deepspeed_config"]["zero3_save_16bit_model"]
    assert zero3["mixed_precision"] == "bf16"


def test_qlora_stays_the_default():
    config = resolve_config("finetune", build_parser("x", "y").parse_args([]), "finetune")
    assert config.resolved_mode(on_cuda=True) == "qlora" and config.loss_reduction == "token"
