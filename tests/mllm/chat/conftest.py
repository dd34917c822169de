"""Chat fixtures: one tiny random checkpoint saved per session, loaded through the public API."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def chat_checkpoint(make_tiny_model, tmp_path_factory):
    from mllm import save_pretrained

    model, processor = make_tiny_model("llama")
    return save_pretrained(model, processor, tmp_path_factory.mktemp("chat") / "ckpt")


@pytest.fixture(scope="session")
def bot(chat_checkpoint):
    from mllm.chat import load

    return load(chat_checkpoint)


@pytest.fixture(scope="session")
def image_files(tmp_path_factory, make_images):
    """Three small PNGs of different colours, plus a text file named like an image."""
    directory = tmp_path_factory.mktemp("chat_images")
    paths = []
    for i, image in enumerate(make_images(3, size=(40, 30))):
        paths.append(directory / f"img{i}.png")
        image.save(paths[-1])
    fake = directory / "fake.png"
    fake.write_text("not an image")
    return paths, fake
