"""llava-hf (transformers' LlavaForConditionalGeneration) → `import` → our model: same logits, same tokens."""
from __future__ import annotations

import json

import pytest
import torch

from mllm.cli import main

from .conftest import (
    IMAGE_SIZE,
    PATCH,
    TOL,
    images,
    llava_tokenizer,
    tiny_clip_vision_config,
    tiny_text_config,
)


def test_import_equals_transformers_llava(hf_llava, tmp_path, compare, capsys):
    from mllm import load_model

    hf_model, source = hf_llava
    out = tmp_path / "imported"
    assert main(["import", str(source), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "format: llava-hf" in printed and "images: pad" in printed

    manifest = json.loads((out / "config.json").read_text())
    assert manifest["tower"]["select_layer"] == -2 and manifest["tower"]["select_feature"] == "patch"
    assert manifest["image_aspect_ratio"] == "pad" and manifest["template"] == "vicuna_v1"
    assert manifest["image_token_id"] == 32000 == hf_model.config.image_token_id  # llava-hf's in-vocabulary <image>
    assert set(manifest["contents"]) == {"projector", "tokenizer", "llm", "vision_tower"}

    model, processor = load_model(out, device="cpu")
    assert model.num_image_tokens == (IMAGE_SIZE // PATCH) ** 2  # CLS dropped, as "default" does
    for n_images in (1, 2):
        question = "<image>\n" * n_images + "Describe the pictures."
        diff, ours, theirs = compare(model, processor, hf_model, images_in=images(n_images), question=question)
        assert diff <= TOL, diff
        assert ours == theirs


def test_our_pixels_equal_the_llava_hf_processor(hf_llava, tmp_path):
    """pad mode = LlavaImageProcessor(do_pad=True): the same pixels for every aspect ratio."""
    from transformers import AutoProcessor

    from mllm import load_model
    from mllm.interop.importer import import_checkpoint

    _, source = hf_llava
    out, _ = import_checkpoint(source, tmp_path / "imported")
    _, processor = load_model(out, device="cpu")
    theirs = AutoProcessor.from_pretrained(str(source)).image_processor
    pics = images(3)
    diff = (processor.image_processor(pics) - theirs(pics, return_tensors="pt")["pixel_values"]).abs().max().item()
    assert diff <= 1e-6


@pytest.mark.parametrize("layer, strategy", [(-1, "full"), (1, "default")])
def test_feature_layer_and_cls_policy_carry_over(layer, strategy, spm_tokenizer_dir, tmp_path, compare):
    """vision_feature_layer is our select_layer (a hidden-state index); "full" keeps CLS (cls_patch)."""
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaImageProcessor,
        LlavaProcessor,
    )

    from mllm import load_model
    from mllm.interop.importer import import_checkpoint

    torch.manual_seed(3)
    extra = 1 if strategy == "full" else 0
    config = LlavaConfig(vision_config=tiny_clip_vision_config(), text_config=tiny_text_config(32064),
                         image_token_index=32000, image_seq_length=(IMAGE_SIZE // PATCH) ** 2 + extra,
                         vision_feature_layer=layer, vision_feature_select_strategy=strategy)
    hf_model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        hf_model.lm_head.weight[32000:] = hf_model.lm_head.weight[:32000].mean(0)
    source = tmp_path / "src"
    hf_model.save_pretrained(str(source))
    LlavaProcessor(image_processor=LlavaImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                                       crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
                   tokenizer=llava_tokenizer(spm_tokenizer_dir, True), patch_size=PATCH,
                   vision_feature_select_strategy=strategy, num_additional_image_tokens=1).save_pretrained(str(source))
    out, _ = import_checkpoint(source, tmp_path / "imported")
    model, processor = load_model(out, device="cpu")
    assert model.config.tower.select_layer == layer
    assert model.config.tower.select_feature == ("cls_patch" if strategy == "full" else "patch")
    assert model.config.image_aspect_ratio == "crop"  # CLIP's resize + centre crop
    assert model.num_image_tokens == (IMAGE_SIZE // PATCH) ** 2 + extra
    diff, ours, theirs = compare(model, processor, hf_model, images_in=images(1))
    assert diff <= TOL and ours == theirs
