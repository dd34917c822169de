"""One ModelSpec: build_model builds it, the manifest stores it (old manifests still load), load_model returns it,
and validate_spec refuses a bad one in one line before any weights load."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from mllm import LoraSpec, MLLMConfig, ModelSpec, ModelSpecError, TowerSpec, build_model, load_model, save_pretrained
from mllm.validation import validate_spec

# A manifest exactly as format_version 1 wrote it before ModelSpec existed (field order of the old MLLMConfig).
V1_MANIFEST = {
    "llm": "lmsys/vicuna-7b-v1.5",
    "tower": {"checkpoint": "microsoft/LLM2CLIP-EVA02-L-14-336", "config": "llm2clip-eva02-l-14-336",
              "select_layer": -2, "select_feature": "patch", "name": "llm2clip-eva02-l-14-336"},
    "projector_type": "mlp2x_gelu", "template": "vicuna_v1", "image_aspect_ratio": "pad", "image_token": "<image>",
    "image_token_id": 32000, "model_max_length": 2048, "quantization": "4bit",
    "lora": {"r": 128, "alpha": 256, "dropout": 0.05, "target_modules": "all-linear"},
    "contents": {"projector": "projector", "tokenizer": "tokenizer", "adapter": "adapter"},
    "extra": {"stage": "finetune", "mode": "qlora"}, "format": "llm2clip-llava", "format_version": 1,
}


def test_format_version_1_manifest_loads_and_gives_its_spec(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(V1_MANIFEST))
    for part in V1_MANIFEST["contents"].values():  # load checks that every listed part exists
        (tmp_path / part).mkdir()
    manifest = MLLMConfig.load(tmp_path)
    assert manifest.spec == ModelSpec(
        llm="lmsys/vicuna-7b-v1.5", tower=TowerSpec(config="llm2clip-eva02-l-14-336", name="llm2clip-eva02-l-14-336"),
        quantization="4bit", lora=LoraSpec(128, 256, 0.05, "all-linear"))
    assert type(manifest.spec) is ModelSpec and manifest.image_token_id == 32000
    # written back with the same keys and values, plus the optional hub revisions (None: the default branch)
    assert manifest.to_dict() == {**V1_MANIFEST, "llm_revision": None,
                                  "tower": {**V1_MANIFEST["tower"], "revision": None}}


def test_build_model_takes_a_spec_and_load_model_returns_it(make_tiny_model, tiny_llm_dirs, tiny_tower_dir,
                                                            spm_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    keyword_model, _ = make_tiny_model("llama", template="plain", image_aspect_ratio="crop")
    spec = ModelSpec(llm=str(tiny_llm_dirs("llama")), tower=TowerSpec(checkpoint=str(tiny_tower_dir), config=None),
                     template="plain", image_aspect_ratio="crop")
    tokenizer = AutoTokenizer.from_pretrained(str(spm_tokenizer_dir))
    model, processor = build_model(spec, tokenizer=tokenizer)
    assert spec.tower.name is None  # the caller's spec is not modified; the model's names its tower
    assert model.spec.tower.name == "tiny-eva02-28-14"
    # the keyword form describes the same model (make_tiny_model only names its tower "tiny-eva02")
    assert model.spec == replace(keyword_model.spec, tower=replace(keyword_model.spec.tower, name="tiny-eva02-28-14"))
    assert processor.template == "plain" and processor.image_processor.image_aspect_ratio == "crop"
    save_pretrained(model, processor, tmp_path / "ckpt")
    loaded, _ = load_model(tmp_path / "ckpt")
    assert loaded.spec == model.spec and type(loaded.spec) is ModelSpec
    rebuilt, _ = build_model(loaded.spec, tokenizer=tokenizer)  # the returned spec rebuilds the architecture
    assert rebuilt.spec == model.spec
    with pytest.raises(TypeError, match="from the spec"):
        build_model(spec, template="vicuna_v1")


@pytest.fixture
def no_weights_load(monkeypatch):
    """Any weight load during the test fails it: validation must happen first."""
    import mllm.builder

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the spec was validated")

    for name in ("load_llm", "load_tower", "load_tokenizer"):
        monkeypatch.setattr(mllm.builder, name, refuse)


def _spec(tiny_llm_dirs, tiny_tower_dir, **changes) -> ModelSpec:
    tower = changes.pop("tower", {})
    return ModelSpec(**{"llm": str(tiny_llm_dirs("llama")), **changes},
                     tower=TowerSpec(**{"checkpoint": str(tiny_tower_dir), "config": None, **tower}))


@pytest.mark.parametrize("changes,build,match", [
    ({"tower": {"select_layer": 4}}, {}, r"select_layer 4 is out of range for tower tiny-eva02-28-14 \(3 blocks: -4..3\)"),
    ({"tower": {"select_layer": -2}}, {"unfreeze_tower_blocks": 3}, r"unfreeze_tower_blocks 3 must be in \[0, 2\]"),
    ({"tower": {"select_feature": "cls"}}, {}, "select_feature must be one of patch, cls_patch"),
    ({"tower": {"config": {"arch": "vit", "image_size": 28}}}, {}, "tower: .*arch must be one of"),
    ({"tower": {"config": "no-such-preset"}}, {}, "tower: config 'no-such-preset' is neither a preset"),
    ({"tower": {"checkpoint": "missing/dir/tower"}}, {}, "tower checkpoint 'missing/dir/tower' is not an existing"),
    ({"tower": {"checkpoint": None, "config": "llm2clip-eva02-l-14-224"}}, {},
     "tower llm2clip-eva02-l-14-224 names no hub checkpoint: set the tower checkpoint"),
    ({"llm": "./no-llm-here"}, {}, "llm './no-llm-here' is not an existing file or directory, nor a hub id"),
    ({"projector_type": "conv"}, {}, "unknown projector type 'conv'; registered: linear"),
    ({"template": "llava_v9"}, {}, "template 'llava_v9' is unknown"),
    ({"image_aspect_ratio": "square"}, {}, "image_aspect_ratio 'square' must be one of"),
    ({"model_max_length": 0}, {}, "model_max_length must be a positive integer"),
    ({"quantization": "3bit"}, {}, "quantization must be one of 4bit, 8bit or none"),
    ({"quantization": "4bit"}, {"train_llm": True}, "training the whole LLM needs it unquantised"),
    ({"lora": LoraSpec(r=0, dropout=1.5)}, {}, "lora r must be a positive integer.*lora dropout must be in"),
])
def test_bad_spec_is_refused_in_one_line_before_any_load(changes, build, match, tiny_llm_dirs, tiny_tower_dir,
                                                         no_weights_load):
    spec = _spec(tiny_llm_dirs, tiny_tower_dir, **changes)
    with pytest.raises(ModelSpecError, match=match) as info:
        build_model(spec, **build)
    assert "\n" not in str(info.value) and str(info.value).startswith("invalid model spec: ")


def test_every_problem_is_named_at_once(tiny_llm_dirs, tiny_tower_dir):
    spec = _spec(tiny_llm_dirs, tiny_tower_dir, template="x", projector_type="y", tower={"select_layer": 9})
    with pytest.raises(ModelSpecError) as info:
        validate_spec(spec)
    assert all(part in str(info.value) for part in ("template 'x'", "projector type 'y'", "select_layer 9"))


def test_valid_specs_pass(tiny_llm_dirs, tiny_tower_dir):
    validate_spec(_spec(tiny_llm_dirs, tiny_tower_dir, lora=LoraSpec(r=4, alpha=8), quantization="4bit"))


def test_hub_ids_offline_must_be_cached(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    spec = ModelSpec(llm="lmsys/vicuna-7b-v1.5", tower="openai-clip-vit-l-14-336")
    with pytest.raises(ModelSpecError, match=r"llm 'lmsys/vicuna-7b-v1.5' is a hub id that is not in the local cache "
                                             r".*; tower checkpoint 'openai/clip-vit-large-patch14-336' is a hub id"):
        validate_spec(spec)
    for repo in ("lmsys/vicuna-7b-v1.5", "openai/clip-vit-large-patch14-336"):
        snapshot = tmp_path / ("models--" + repo.replace("/", "--")) / "snapshots" / "abc"
        snapshot.mkdir(parents=True)
    validate_spec(spec, unfreeze_tower_blocks=23)  # cached: fine offline (the tower preset knows its depth)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    validate_spec(ModelSpec(llm="someone/not-cached"))  # online: a hub id is only checked for its shape
