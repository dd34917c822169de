"""The pixel-shuffle projector through every command that touches a model: stage 1 and stage 2 (finetune CLI),
save/load, chat, merge, eval and the lmms-eval adapter, with a 4x4 tower grid merged into 2x2 = 4 tokens; and
spec validation refusing a k that does not divide the grid in one line, before anything loads."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from mllm import load_model
from mllm.chat import load as load_chat
from mllm.cli import main as cli_main
from mllm.generation import GenerationSettings, generate_text
from mllm.tiny import save_tiny_tower

PROJECTOR = "pixel_shuffle2_mlp2x_gelu"


@pytest.fixture(scope="module")
def tower_4x4(tmp_path_factory):
    return save_tiny_tower(tmp_path_factory.mktemp("tower_4x4"), image_size=56, patch_size=14)  # 4x4 patches


@pytest.fixture(scope="module")
def trained(train_env, cli, tower_4x4, tmp_path_factory):
    root = tmp_path_factory.mktemp("pixel_shuffle_run")
    common = dict(tower_checkpoint=tower_4x4, projector_type=PROJECTOR, max_steps=2, save_steps=0)
    cli.run(["pretrain", *cli.args(train_env, root / "stage1", **common)])
    cli.run(["finetune", *cli.args(train_env, root / "stage2", mode="lora", pretrained_projector=root / "stage1",
                                   **common)])
    return root


def test_both_stages_train_and_the_checkpoint_uses_four_tokens(trained, make_images):
    for stage in ("stage1", "stage2"):
        summary = json.loads((trained / stage / "training_summary.json").read_text())
        assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    model, processor = load_model(trained / "stage2")
    assert model.spec.projector_type == PROJECTOR and "adapter" in model.config.contents
    assert model.vision_tower.num_image_tokens == 16 and model.num_image_tokens == processor.num_image_tokens == 4
    stage1 = json.loads((trained / "stage1" / "projector" / "projector_config.json").read_text())
    assert stage1["projector_type"] == PROJECTOR and stage1["in_features"] == model.vision_tower.hidden_size
    batch = processor(["<image>\nWhat colour is the picture?"], [make_images(1)])
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 4


def test_chat_and_merge(trained, tmp_path, make_images):
    image = make_images(2)[1]
    bot = load_chat(trained / "stage2")
    turns, _ = bot.prepare("What colour is the picture?", image)
    assert bot.processor.encode_prompt(turns).count(bot.processor.image_token_id) == 4
    assert isinstance(bot.chat("What colour is the picture?", image, max_new_tokens=4), str)

    assert cli_main(["merge", str(trained / "stage2"), str(tmp_path / "merged"), "--dtype", "fp32"]) == 0
    model, processor = load_model(trained / "stage2")
    merged, _ = load_model(tmp_path / "merged")
    assert merged.spec.projector_type == PROJECTOR and "llm" in merged.config.contents
    batch = processor(["<image>\nWhat colour is the picture?"], [[image]])
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch, return_logits=True).logits,
                                   model(**batch, return_logits=True).logits, rtol=1e-4, atol=1e-4)


def test_eval_runner_and_lmms_adapter(trained, tmp_path, make_images):
    from mllm.eval import export_synthetic
    from mllm.eval.lmms_adapter import LLM2CLIPLlava
    from mllm.eval.runner import EvalConfig, run_eval

    images = make_images(3)
    for i, im in enumerate(images):
        im.save(tmp_path / f"{i}.png")
    samples = [{"image": f"{i}.png", "question": "What color is the image?", "answer": "red", "kind": "short",
                "question_id": f"q{i}"} for i in range(3)]
    bench = export_synthetic(samples, tmp_path / "bench", image_root=tmp_path, formats=("vqav2",))["vqav2"]
    result = run_eval(EvalConfig(benchmark=bench.name, data=str(bench.data), options=dict(bench.options),
                                 model=str(trained / "stage2"), output_dir=str(tmp_path / "eval"), num_workers=0,
                                 batch_size=2, max_new_tokens=4, progress=False))
    assert len(result.predictions) == 3

    lm = LLM2CLIPLlava(pretrained=str(trained / "stage2"), device="cpu", batch_size=2, max_new_tokens=4)
    assert lm.processor.num_image_tokens == 4
    lm.task_dict = {"synth": {"test": [{"image": im} for im in images]}}
    requests = [SimpleNamespace(args=("What colour?", {"max_new_tokens": 4, "until": []}, lambda d: [d["image"]], i,
                                      "synth", "test")) for i in range(3)]
    direct = generate_text(lm.model, lm.processor, [[{"from": "human", "value": "<image>\nWhat colour?"}]] * 3,
                           [[im] for im in images], GenerationSettings(max_new_tokens=4))
    assert lm.generate_until(requests) == direct


def test_a_k_that_does_not_divide_the_grid_fails_in_one_line_before_loading(train_env, cli, tower_4x4, tmp_path,
                                                                              capsys):
    out = tmp_path / "run"
    args = cli.args(train_env, out, tower_checkpoint=tower_4x4, projector_type="pixel_shuffle3_mlp2x_gelu")
    assert cli_main(["finetune", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm2clip-llava finetune: error: invalid model spec: ") and "\n" not in err
    assert "pixel_shuffle3: k=3 must divide the tower's 4x4 patch grid" in err
    assert not out.exists()
    args = cli.args(train_env, out, tower_checkpoint=tower_4x4, projector_type=PROJECTOR, select_feature="cls_patch")
    assert cli_main(["finetune", *args]) == 2
    assert "use select_feature 'patch'" in capsys.readouterr().err
