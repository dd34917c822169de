"""Shared fixtures: tiny random models of the real architectures, built and saved once per test session."""
from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def spm_tokenizer_dir(tmp_path_factory):
    """A real 32k Llama SentencePiece tokenizer (from mistral_common) that adds BOS like Vicuna's."""
    from mllm.tiny import save_spm_tokenizer

    path = tmp_path_factory.mktemp("spm_tokenizer")
    save_spm_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_tower_dir(tmp_path_factory):
    from mllm.tiny import save_tiny_tower

    return save_tiny_tower(tmp_path_factory.mktemp("tiny_tower"))


@pytest.fixture(scope="session")
def tiny_llm_dirs(tmp_path_factory):
    """family -> directory of a saved tiny random causal LM; built lazily per family."""
    from mllm.tiny import save_tiny_llm

    cache: dict[str, object] = {}

    def get(family: str = "llama"):
        if family not in cache:
            cache[family] = save_tiny_llm(tmp_path_factory.mktemp(f"tiny_{family}"), family)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def quickstart_home(tmp_path_factory):
    """The CI-sized quickstart, run once per session into a private LLM2CLIP_LLAVA_HOME.

    Commands started with `env` (e.g. subprocesses of chat, demo, eval without --model) find its model as their
    default, exactly as after a user's `llm2clip-llava quickstart`.
    """
    from types import SimpleNamespace

    from mllm.paths import HOME_ENV
    from mllm.quickstart.profiles import PROFILES
    from mllm.quickstart.run import run_quickstart

    home = tmp_path_factory.mktemp("llm2clip_home")
    root = home / "quickstart"
    report = run_quickstart(root, PROFILES["ci"], seed=0)
    return SimpleNamespace(home=home, root=root, report=report, model_dir=root / "model",
                           env={**os.environ, HOME_ENV: str(home)})


# ---------------------------------------------------------------- tiny models and images (every test package)
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


@pytest.fixture(scope="session")
def quickstart_conversation(quickstart_home):
    """(image path, [(question, gold answer)] x 5) about the first held-out image of the quickstart: its colour,
    shape and side questions (the kinds its training data asks in one conversation), then colour and shape again.
    """
    import json

    records = json.loads((quickstart_home.root / "data" / "heldout.json").read_text())
    image = records[0]["image"]
    by_category = {r["category"]: (r["text"], r["answer"]) for r in records if r["image"] == image}
    return str(quickstart_home.root / "data" / image), [by_category[c] for c in ("color", "shape", "half", "color", "shape")]
