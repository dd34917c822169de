"""An imported LLaVA checkpoint works everywhere a trained one does: chat, eval and `finetune --init_from`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mllm.cli import main

from .conftest import images, write_llava_original


@pytest.fixture(scope="module")
def imported(hf_llava, clip_tower_dir, spm_tokenizer_dir, tmp_path_factory):
    from mllm.interop.importer import import_checkpoint

    hf_model, _ = hf_llava
    root = tmp_path_factory.mktemp("imported_llava")
    source = write_llava_original(root / "llava-v1.5-tiny", hf_model, spm_tokenizer_dir, with_tower=True, sharded=True,
                                  vision_tower=str(clip_tower_dir))
    out, _ = import_checkpoint(source, root / "ours")
    image = root / "photo.png"
    images(1)[0].save(image)
    return out, image


def test_chat_command(imported, capsys):
    checkpoint, image = imported
    capsys.readouterr()
    assert main(["chat", "--model", str(checkpoint), "--image", str(image), "-q", "What is it?", "--max-new-tokens", "5",
                 "--device", "cpu", "--no-stream"]) == 0
    assert capsys.readouterr().out.strip()


def test_eval_command(imported, tmp_path, capsys):
    from mllm.eval import export_synthetic

    checkpoint, image = imported
    samples = [{"image": str(image), "question": "Is there a red object?", "answer": "Yes", "kind": "yes_no",
                "question_id": "q0"},
               {"image": str(image), "question": "Is there a dog?", "answer": "No", "kind": "yes_no", "question_id": "q1"}]
    bench = export_synthetic(samples, tmp_path / "bench")["pope"]
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(checkpoint), "--benchmark", "pope", "--data", str(bench.data), "--output-dir", str(out),
            "--batch-size", "2", "--num-workers", "0", "--max-new-tokens", "2", "--no-progress"]
    argv += [f"--option={k}={v}" for k, v in bench.options.items()]
    assert main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["n"] == 2


@pytest.mark.slow
def test_finetune_init_from(imported, tmp_path):
    """Stage 2 starts from the imported model: its LLM, tokenizer, tower and projector, not the preset's."""
    from mllm import load_model

    checkpoint, image = imported
    records = [{"id": f"s{i}", "image": image.name, "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "red"}]} for i in range(4)]
    (tmp_path / "data.json").write_text(json.dumps(records))
    run = tmp_path / "run"
    args = {"init_from": checkpoint, "data_path": tmp_path / "data.json", "image_folder": image.parent, "mode": "lora",
            "max_steps": 2, "global_batch_size": 2, "micro_batch_size": 2, "save_steps": 0, "logging_steps": 1,
            "lora_r": 4, "lora_alpha": 8, "learning_rate": 1e-4, "num_workers": 0, "gradient_checkpointing": "false",
            "dtype": "fp32", "output_dir": run}
    argv = [sys.executable, "-m", "mllm.cli", "finetune"] + [x for k, v in args.items() for x in (f"--{k}", str(v))]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    used = json.loads((run / "train_config.json").read_text())
    assert used["llm"] == str(checkpoint / "llm") and used["tokenizer"] == str(checkpoint / "tokenizer")
    assert used["tower_checkpoint"] == str(checkpoint / "vision_tower") and used["template"] == "vicuna_v1"
    trained, _ = load_model(run, device="cpu")
    start, _ = load_model(checkpoint, device="cpu")
    assert trained.config.llm == str(checkpoint / "llm") and "adapter" in trained.config.contents
    for name, value in start.projector.state_dict().items():  # initialised from the imported projector
        moved = (trained.projector.state_dict()[name] - value).abs().max().item()
        assert 0 < moved < 0.01 * value.abs().max().item() + 1e-3
    assert torch.equal(trained.vision_tower.state_dict()["model.embeddings.patch_embedding.weight"],
                       start.vision_tower.state_dict()["model.embeddings.patch_embedding.weight"])
