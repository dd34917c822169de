"""LLaVA's own format (LlavaLlamaForCausalLM key names) → `import` → equal to the same weights loaded the llava-hf
way (transformers' Llava), for every layout LLaVA writes: sharded or not, with or without the tower's weights,
LoRA + non_lora_trainables on a base LLM, and the stage-1 projector alone."""
from __future__ import annotations

import json

import pytest
import torch

from mllm.cli import main

from .conftest import (
    TEXT_VOCAB,
    TOL,
    images,
    llava_original_config,
    llava_original_state,
    write_llava_original,
)


@pytest.mark.parametrize("sharded, with_tower", [(True, True), (False, False)],
                         ids=["bin-shards+tower-weights", "safetensors+tower-by-path"])
def test_llava_format_equals_llava_hf(sharded, with_tower, hf_llava, clip_tower_dir, spm_tokenizer_dir, tmp_path,
                                      compare, capsys):
    from mllm import load_model

    hf_model, _ = hf_llava
    source = write_llava_original(tmp_path / "llava-v1.5", hf_model, spm_tokenizer_dir, with_tower=with_tower,
                                  sharded=sharded, vision_tower=str(clip_tower_dir))
    out = tmp_path / "imported"
    assert main(["import", str(source), str(out)]) == 0
    assert "format: llava" in capsys.readouterr().out
    manifest = json.loads((out / "config.json").read_text())
    assert ("vision_tower" in manifest["contents"]) == with_tower  # else the tower is loaded by name at load time
    assert manifest["tower"]["checkpoint"] == (None if with_tower else str(clip_tower_dir))
    assert manifest["image_aspect_ratio"] == "pad" and manifest["template"] == "vicuna_v1"

    model, processor = load_model(out, device="cpu")
    assert model.llm.config.vocab_size == TEXT_VOCAB and processor.image_token_id == TEXT_VOCAB  # <image> outside
    diff, ours, theirs = compare(model, processor, hf_model, images_in=images(1))
    assert diff <= TOL, diff
    assert ours == theirs


def test_lora_checkpoint_on_model_base(hf_llava, clip_tower_dir, spm_tokenizer_dir, tmp_path, compare):
    """LLaVA's LoRA output (adapter + non_lora_trainables.bin with peft's doubled prefixes) with --model-base."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

    from mllm import load_model

    hf_model, _ = hf_llava
    base_dir = tmp_path / "vicuna"  # the base LLM: the Llava's language model, text vocabulary only
    text_config = hf_model.config.text_config.to_dict()
    base = LlamaForCausalLM(type(hf_model.config.text_config).from_dict({**text_config, "vocab_size": TEXT_VOCAB}))
    base.load_state_dict({k: v for k, v in llava_original_state(hf_model, with_tower=False).items()
                          if not k.startswith("model.mm_projector.") and "rotary_emb" not in k})
    base.save_pretrained(str(base_dir))
    copy_files(spm_tokenizer_dir, base_dir)

    torch.manual_seed(5)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    source = tmp_path / "llava-v1.5-lora"
    source.mkdir()
    adapter = {k.replace(".default", ""): v.clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
    torch.save(adapter, source / "adapter_model.bin")
    (source / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "v_proj", "down_proj"], "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "base_model_name_or_path": "./checkpoints/vicuna-7b-v1.5", "modules_to_save": None}))
    torch.save({f"base_model.model.model.mm_projector.{k.replace('linear_1.', '0.').replace('linear_2.', '2.')}": v
                for k, v in hf_model.model.multi_modal_projector.state_dict().items()}, source / "non_lora_trainables.bin")
    (source / "config.json").write_text(json.dumps(llava_original_config(hf_model, str(clip_tower_dir))))

    out = tmp_path / "imported"
    assert main(["import", str(source), str(out), "--model-base", str(base_dir)]) == 0
    manifest = json.loads((out / "config.json").read_text())
    assert manifest["llm"] == str(base_dir) and "adapter" in manifest["contents"] and manifest["lora"]["r"] == 4

    # the reference: transformers' Llava holding the merged weights
    merged = peft_model.merge_and_unload()
    reference = LlavaForConditionalGeneration(hf_model.config).eval()
    reference.load_state_dict(hf_model.state_dict())
    with torch.no_grad():
        for k, v in merged.model.state_dict().items():
            reference.model.language_model.state_dict()[k][: v.shape[0]].copy_(v)
    model, processor = load_model(out, device="cpu")
    diff, ours, theirs = compare(model, processor, reference, images_in=images(1))
    assert diff <= TOL, diff
    assert ours == theirs


def copy_files(src, dst) -> None:
    dst.mkdir(exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())


def test_stage1_projector_on_model_base(hf_llava, clip_tower_dir, tiny_llm_dirs, spm_tokenizer_dir, tmp_path):
    """mm_projector.bin (LLaVA's stage-1 output): the projector, on --model-base, template plain."""
    from mllm import load_model

    hf_model, _ = hf_llava
    source = tmp_path / "llava-pretrain"
    source.mkdir()
    projector = {f"model.mm_projector.{k.replace('linear_1.', '0.').replace('linear_2.', '2.')}": v
                 for k, v in hf_model.model.multi_modal_projector.state_dict().items()}
    torch.save(projector, source / "mm_projector.bin")
    (source / "config.json").write_text(json.dumps(llava_original_config(hf_model, str(clip_tower_dir))))
    base = tmp_path / "base"
    copy_files(tiny_llm_dirs("llama"), base)
    copy_files(spm_tokenizer_dir, base)

    out = tmp_path / "imported"
    assert main(["import", str(source), str(out), "--model-base", str(base)]) == 0
    model, _ = load_model(out, device="cpu")
    assert model.config.template == "plain" and set(model.config.contents) == {"projector", "tokenizer"}
    for k, v in hf_model.model.multi_modal_projector.state_dict().items():
        ours = model.projector.state_dict()[k.replace("linear_1.", "layers.0.").replace("linear_2.", "layers.2.")]
        assert torch.equal(ours, v)


@pytest.mark.parametrize("overrides, message", [
    ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
    ({"image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial_unpad"}, "any-resolution"),
    ({"architectures": ["LlavaMptForCausalLM"]}, "trust_remote_code"),
    ({"mm_projector_type": "qformer"}, "mm_projector_type"),
])
def test_layouts_we_cannot_express_are_refused(overrides, message, hf_llava, clip_tower_dir, spm_tokenizer_dir,
                                               tmp_path, capsys):
    hf_model, _ = hf_llava
    source = write_llava_original(tmp_path / "src", hf_model, spm_tokenizer_dir, with_tower=False, sharded=False,
                                  vision_tower=str(clip_tower_dir), config_overrides=overrides)
    out = tmp_path / "out"
    assert main(["import", str(source), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm2clip-llava import: error:") and message in err and "\n" not in err
    assert not out.exists()
