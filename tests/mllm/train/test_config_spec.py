"""TrainConfig: its flags are the ModelSpec flattened, --help comes from the field metadata, a bad spec fails fast."""
from __future__ import annotations

import dataclasses

import pytest

from mllm import LoraSpec, ModelSpec, TowerSpec
from mllm.cli import main as cli_main
from mllm.train.config import TrainConfig, build_parser, field_default


def _leaves(cls, prefix=""):
    """Dotted paths of every leaf field of a (nested) spec dataclass."""
    nested = {"tower": TowerSpec, "lora": LoraSpec}
    for f in dataclasses.fields(cls):
        if f.name in nested and cls is ModelSpec:
            yield from _leaves(nested[f.name], f"{f.name}.")
        else:
            yield prefix + f.name


def test_flags_cover_the_whole_model_spec():
    mapped = set()
    for f in dataclasses.fields(TrainConfig):
        paths = f.metadata.get("spec", ())
        mapped.update((paths,) if isinstance(paths, str) else paths)
    derived = {"quantization", "image_token"}  # from the mode (qlora: 4bit); always <image> in training
    assert mapped | derived == set(_leaves(ModelSpec))


def test_model_spec_follows_flags_and_mode():
    cfg = TrainConfig(llm="my/llm", tower="openai-clip-vit-l-14-336", tower_checkpoint="ckpt.pt", select_layer=-3,
                      projector_type="linear", template="plain", image_aspect_ratio="crop", model_max_length=512,
                      lora_r=8, lora_alpha=16, lora_dropout=0.1, lora_target_modules="q_proj")
    spec = cfg.model_spec("qlora")
    assert spec == ModelSpec(
        llm="my/llm", tower=TowerSpec(checkpoint="ckpt.pt", config="openai-clip-vit-l-14-336", select_layer=-3,
                                      name="openai-clip-vit-l-14-336"),
        projector_type="linear", template="plain", image_aspect_ratio="crop", model_max_length=512,
        quantization="4bit", lora=LoraSpec(8, 16, 0.1, "q_proj"))
    assert cfg.model_spec("lora").quantization is None and cfg.model_spec("lora").lora == spec.lora
    for mode in ("projector", "full"):
        assert cfg.model_spec(mode).lora is None and cfg.model_spec(mode).quantization is None
    # the built-in defaults are the spec's own defaults
    default = TrainConfig().model_spec("lora")
    assert default.tower == TowerSpec.from_preset("llm2clip-eva02-l-14-336")
    assert default.lora == LoraSpec() and default.projector_type == ModelSpec.projector_type


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_help_shows_every_field_with_its_description_and_default(stage):
    text = " ".join(build_parser(f"llm2clip-llava {stage}", "d", default_preset=stage).format_help().split())
    for f in dataclasses.fields(TrainConfig):
        help_line = f.metadata.get("help", "")
        assert help_line, f"TrainConfig.{f.name} has no help metadata"
        if f.name == "stage":
            continue
        assert f"--{f.name} " in text
        assert " ".join(help_line.split()) in text
    for group in ("what to train:", "model:", "data:", "optimisation:", "output:"):
        assert group in text
    assert "--seed INT random seed (new weights, data order, dropout) [default 42]" in text
    if stage == "pretrain":  # a value the preset sets is shown with the built-in one
        assert "[default 0.001 from preset pretrain, built-in 0.0002]" in text


def test_help_through_the_console_script(capsys):
    with pytest.raises(SystemExit) as done:
        cli_main(["finetune", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--lora_r INT" in out and "LoRA rank" in out and "[default 128]" in out


def test_bad_spec_fails_in_one_line_before_anything_is_written(train_env, cli, tmp_path, capsys):
    out = tmp_path / "run"
    args = cli.args(train_env, out, select_layer=7, projector_type="conv")
    assert cli_main(["finetune", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm2clip-llava finetune: error: invalid model spec: ") and "\n" not in err
    assert "unknown projector type 'conv'" in err and "select_layer 7 is out of range" in err
    assert not out.exists()


def test_field_defaults_are_unchanged_for_existing_runs():
    defaults = {f.name: field_default(f) for f in dataclasses.fields(TrainConfig)}
    assert {k: defaults[k] for k in ("tower_checkpoint", "select_layer", "select_feature", "projector_type", "template",
                                     "image_aspect_ratio", "model_max_length", "lora_r", "lora_alpha", "lora_dropout",
                                     "lora_target_modules")} == {
        "tower_checkpoint": "microsoft/LLM2CLIP-EVA02-L-14-336", "select_layer": -2, "select_feature": "patch",
        "projector_type": "mlp2x_gelu", "template": "vicuna_v1", "image_aspect_ratio": "pad", "model_max_length": 2048,
        "lora_r": 128, "lora_alpha": 256, "lora_dropout": 0.05, "lora_target_modules": "all-linear"}
