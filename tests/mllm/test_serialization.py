"""Save → load round trips for every checkpoint kind, chosen by the manifest and never by folder name."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from mllm import LoraSpec, ManifestError, load_model, save_pretrained
from projector import ProjectorMismatchError


def _perturb_trainable(model, seed=0):
    """Give every trainable tensor non-trivial values (LoRA B starts at zero, which would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * 0.05)


def _logits(model, processor, make_images):
    batch = processor(["<image>\nWhat is in the picture?", "Text only question"], [make_images(1), None],
                      padding_side="left")
    model.eval()
    with torch.no_grad():
        return model(**batch, return_logits=True).logits


@pytest.mark.parametrize("kind", ["projector", "lora", "full", "tower"])
def test_round_trip_identical_logits(kind, make_tiny_model, make_images, tmp_path):
    kwargs = {
        "projector": {},
        "lora": {"lora": LoraSpec(r=4, alpha=8, dropout=0.0)},
        "full": {"train_llm": True},
        "tower": {"unfreeze_tower_blocks": 1},
    }[kind]
    model, processor = make_tiny_model("llama", **kwargs)
    _perturb_trainable(model)
    before = _logits(model, processor, make_images)
    save_pretrained(model, processor, tmp_path / "ckpt")
    contents = json.loads((tmp_path / "ckpt" / "config.json").read_text())["contents"]
    assert {"projector", "tokenizer"} <= set(contents)
    assert ("adapter" in contents) == (kind == "lora")
    assert ("llm" in contents) == (kind == "full")
    assert ("vision_tower" in contents) == (kind == "tower")
    loaded, loaded_processor = load_model(tmp_path / "ckpt")
    after = _logits(loaded, loaded_processor, make_images)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_loader_ignores_folder_names(make_tiny_model, make_images, tmp_path):
    model, processor = make_tiny_model("llama", lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    _perturb_trainable(model)
    save_pretrained(model, processor, tmp_path / "a")
    reference = _logits(model, processor, make_images)
    # LLaVA's loader branched on 'llava' / 'lora' substrings; names must not matter here
    for name in ("llava-v1.5-7b-lora-merged", "plain"):
        shutil.copytree(tmp_path / "a", tmp_path / name)
        loaded, proc = load_model(tmp_path / name)
        torch.testing.assert_close(_logits(loaded, proc, make_images), reference, rtol=0, atol=0)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ManifestError, match="config.json is missing"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ManifestError, match="not an llm2clip-llava manifest"):
        load_model(tmp_path)


def test_missing_listed_part_is_named(make_tiny_model, tmp_path):
    model, processor = make_tiny_model("llama", lora=LoraSpec(r=4, alpha=8))
    save_pretrained(model, processor, tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "ckpt" / "adapter")
    with pytest.raises(FileNotFoundError, match="'adapter'"):
        load_model(tmp_path / "ckpt")


def test_projector_from_other_llm_is_refused(make_tiny_model, tmp_path, tiny_llm_dirs):
    model, processor = make_tiny_model("llama")
    save_pretrained(model, processor, tmp_path / "ckpt")
    from projector import build_projector, save_projector

    save_projector(build_projector("mlp2x_gelu", model.vision_tower.hidden_size, 96, tower="tiny-eva02"),
                   tmp_path / "ckpt" / "projector")
    with pytest.raises(ProjectorMismatchError, match="output dim 96"):
        load_model(tmp_path / "ckpt")


def test_stage1_projector_initialises_stage2(make_tiny_model, make_images, tmp_path):
    stage1, processor = make_tiny_model("llama")
    _perturb_trainable(stage1)
    save_pretrained(stage1, processor, tmp_path / "stage1")
    stage2, _ = make_tiny_model("llama", projector_path=tmp_path / "stage1" / "projector",
                                lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    for a, b in zip(stage1.projector.parameters(), stage2.projector.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ProjectorMismatchError, match="trained with tower"):
        from projector import load_projector

        load_projector(tmp_path / "stage1" / "projector", expected_tower="openai-clip-vit-l-14-336")
