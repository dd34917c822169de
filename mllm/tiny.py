"""Tiny, randomly initialised models of the real architectures, for the quickstart, tests and benchmarks.

Nothing here is a mock: the LLMs are transformers' own Llama/Mistral/Qwen2/Gemma/Phi-3 classes and the tower
is the same `vision_tower` code path as the full EVA02-L-14-336, only smaller. The tokenizer is a real
32k Llama-family SentencePiece model shipped inside the `mistral_common` package (no download).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from vision_tower import VisionTowerConfig, build_vision_tower

LLM_FAMILIES = ("llama", "mistral", "qwen2", "gemma", "phi3")


def spm_tokenizer_model_path() -> Path:
    """Path of the 32k Llama/Mistral SentencePiece model shipped by `mistral_common` (pip install mistral-common).

    `$LLM2CLIP_LLAVA_SPM_MODEL` may point at a copy of that file instead (machines without mistral_common).
    """
    override = os.environ.get("LLM2CLIP_LLAVA_SPM_MODEL")
    if override:
        return Path(override)
    try:
        import mistral_common
    except ImportError as exc:
        raise ImportError("the tiny models use the SentencePiece tokenizer shipped by mistral-common: "
                          "pip install mistral-common") from exc
    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed mistral_common package")
    return path


def save_spm_tokenizer(directory: str | Path, *, chat_template: str | None = None):
    """Write a Llama tokenizer (BOS added, like Vicuna's) built from the shipped SentencePiece model."""
    from transformers import LlamaTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spm_tokenizer_model_path(), directory / "tokenizer.model")
    tokenizer = LlamaTokenizer.from_pretrained(str(directory), add_bos_token=True, add_eos_token=False)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def tiny_llm_config(family: str = "llama", *, vocab_size: int = 32000, hidden_size: int = 64, num_layers: int = 2,
                    num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int | None = None,
                    max_position_embeddings: int = 4096, tie_word_embeddings: bool = False,
                    initializer_range: float = 0.02):
    """A transformers config of `family` at toy size (BOS=1, EOS=2, as in the Llama SentencePiece vocab)."""
    from transformers import GemmaConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "gemma": GemmaConfig,
               "phi3": Phi3Config}
    if family not in classes:
        raise ValueError(f"unknown LLM family {family!r}; choose one of {LLM_FAMILIES}")
    kwargs = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=tie_word_embeddings, initializer_range=initializer_range,
    )
    if family == "gemma":
        kwargs["head_dim"] = hidden_size // num_heads
    return classes[family](**kwargs)


def save_tiny_llm(directory: str | Path, family: str = "llama", *, seed: int = 0, **sizes) -> Path:
    """Randomly initialise a tiny causal LM of `family` and save it (safetensors + config) to `directory`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_llm_config(family, **sizes))
    model.save_pretrained(str(directory), safe_serialization=True)
    return Path(directory)


def tiny_tower_config(*, arch: str = "eva02", image_size: int = 28, patch_size: int = 14, hidden_size: int = 32,
                      num_layers: int = 3, num_heads: int = 2, intermediate_size: int = 64,
                      rope_pt_grid: int | None = None):
    """A tower config with the real structure at toy size: `eva02` (RoPE, SwiGLU + sub-LN, CLS; the LLM2CLIP
    tower) or `clip` (transformers' CLIPVisionModel, quick-GELU; LLaVA-1.5's OpenAI CLIP tower)."""
    common = dict(name=f"tiny-{arch}-{image_size}-{patch_size}", image_size=image_size, patch_size=patch_size,
                  hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                  intermediate_size=intermediate_size)
    if arch == "clip":
        return VisionTowerConfig(arch="clip", layer_norm_eps=1e-5, rope=False, hidden_act="quick_gelu", **common)
    if arch != "eva02":
        raise ValueError(f"unknown tower arch {arch!r}; choose eva02 or clip")
    return VisionTowerConfig(arch="eva02", rope_pt_grid=rope_pt_grid or image_size // patch_size, **common)


def save_tiny_tower(directory: str | Path, *, seed: int = 0, **sizes) -> Path:
    """Randomly initialise a tiny tower (EVA02 unless `arch="clip"`) and save it with `save_pretrained`."""
    torch.manual_seed(seed)
    tower = build_vision_tower(tiny_tower_config(**sizes))
    tower.save_pretrained(str(directory))
    return Path(directory)
