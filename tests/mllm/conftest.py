"""Model-test fixtures: build a tiny model + processor, and make small distinct images."""
from __future__ import annotations

import pytest
from PIL import Image


def _images(n: int, size=(37, 23)):
    colours = [(220, 20, 20), (20, 200, 30), (30, 40, 210), (240, 230, 20), (128, 0, 128), (0, 0, 0),
               (255, 255, 255), (90, 60, 30)]
    out = []
    for i in range(n):
        im = Image.new("RGB", size, colours[i % len(colours)])
        im.putpixel((i % size[0], 0), (i * 30 % 256, 0, 0))
        out.append(im)
    return out


@pytest.fixture(scope="session")
def make_images():
    return _images


@pytest.fixture(scope="session")
def make_tiny_model(tiny_llm_dirs, tiny_tower_dir, spm_tokenizer_dir):
    """make_tiny_model(family="llama", **build_model_kwargs) -> (model, processor)."""
    from transformers import AutoTokenizer

    from mllm import TowerSpec, build_model

    def make(family: str = "llama", **kwargs):
        tokenizer = AutoTokenizer.from_pretrained(str(spm_tokenizer_dir))
        spec = TowerSpec(checkpoint=str(tiny_tower_dir), config=None, name="tiny-eva02")
        return build_model(str(tiny_llm_dirs(family)), tower=spec, tokenizer=tokenizer, **kwargs)

    return make
