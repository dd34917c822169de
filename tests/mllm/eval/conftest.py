"""Eval fixtures: a saved tiny checkpoint and synthetic POPE / MME / VQAv2 folders with generated images."""
from __future__ import annotations

import pytest
from PIL import Image

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]


def synthetic_samples(root):
    """Three questions per image (two yes/no, one short answer); images of different sizes and shapes."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    samples = []
    for i, colour in enumerate(COLOURS):
        size = [(40, 30), (23, 57), (32, 32), (64, 20), (31, 45), (50, 50)][i]
        im = Image.new("RGB", size, colour)
        im.putpixel((i, i), (i * 40, 255 - i * 40, 7))
        im.save(root / "imgs" / f"{i}.png")
        samples += [
            {"image": f"imgs/{i}.png", "question": f"Is the image {colour}?", "answer": "Yes", "kind": "yes_no",
             "question_id": f"{i}-yes"},
            {"image": f"imgs/{i}.png", "question": "Is the image black?", "answer": "No", "kind": "yes_no",
             "question_id": f"{i}-no"},
            {"image": f"imgs/{i}.png", "question": "What color is the image?", "answer": colour, "kind": "short",
             "question_id": f"{i}-colour"},
        ]
    return samples


@pytest.fixture(scope="session")
def synthetic_bench(tmp_path_factory):
    """name -> ExportedBenchmark for pope, mme and vqav2 (18 questions, 12 yes/no, over 6 images)."""
    from mllm.eval import export_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    return export_synthetic(synthetic_samples(root), root / "bench", image_root=root)


@pytest.fixture(scope="session")
def tiny_checkpoint(make_tiny_model, tmp_path_factory):
    from mllm import save_pretrained

    model, processor = make_tiny_model("llama")
    return save_pretrained(model, processor, tmp_path_factory.mktemp("ckpt") / "tiny-llm2clip")


@pytest.fixture(scope="session")
def loaded_checkpoint(tiny_checkpoint):
    from mllm import load_model

    return load_model(tiny_checkpoint, device="cpu")
