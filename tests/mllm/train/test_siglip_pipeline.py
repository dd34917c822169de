"""A tower without a CLS token through the whole pipeline: a tiny random SigLIP tower is trained (finetune CLI,
LoRA + projector), saved, loaded and chatted with, with one LLM token per patch."""
from __future__ import annotations

import json
import math

import torch

from mllm import load_model, save_pretrained
from mllm.chat import load as load_chat
from vision_tower import VisionTowerConfig, build_vision_tower


def test_siglip_tower_trains_saves_loads_and_chats(train_env, cli, tmp_path, make_images):
    torch.manual_seed(0)
    config = VisionTowerConfig(arch="siglip", name="tiny-siglip", image_size=28, patch_size=14, hidden_size=32,
                               num_layers=3, num_heads=2, intermediate_size=64, rope=False, hidden_act="gelu")
    build_vision_tower(config).save_pretrained(tmp_path / "tower")

    run = tmp_path / "run"
    cli.run(["finetune", *cli.args(train_env, run, tower_checkpoint=tmp_path / "tower", max_steps=2, save_steps=0)])
    summary = json.loads((run / "training_summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])

    model, processor = load_model(run)
    assert type(model.vision_tower).__name__ == "SiglipVisionTower" and model.spec.tower.name == "tiny-siglip"
    assert model.num_image_tokens == processor.num_image_tokens == 4  # 2x2 patches, no CLS token to drop
    batch = processor(["<image>\nWhat colour is the picture?"], [make_images(1)])
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 4
    with torch.no_grad():
        logits = model(**batch, return_logits=True).logits
    save_pretrained(model, processor, tmp_path / "again")
    reloaded, _ = load_model(tmp_path / "again")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch, return_logits=True).logits, logits, rtol=0, atol=0)

    bot = load_chat(run)
    turns, images = bot.prepare("What colour is the picture?", make_images(1)[0])
    assert bot.processor.encode_prompt(turns).count(bot.processor.image_token_id) == 4
    answer = bot.chat("What colour is the picture?", make_images(1)[0], max_new_tokens=4)
    assert isinstance(answer, str)
