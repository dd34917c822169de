"""Tiny random models of the real architectures in the three formats: transformers' Llava (llava-hf), LLaVA's
own layout (LlavaLlamaForCausalLM key names, sharded or not, with or without the tower) and ours."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

IMAGE_SIZE, PATCH = 28, 14  # 4 patches per image
TEXT_VOCAB = 32000  # the SentencePiece tokenizer's; llava-hf vocabularies add <image> (+ padding to 32064)
TOL = 1e-5  # fp32 logits: transformers' Llava vs ours


def tiny_clip_vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                            image_size=IMAGE_SIZE, patch_size=PATCH, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def tiny_text_config(vocab_size: int):
    from mllm.tiny import tiny_llm_config

    return tiny_llm_config("llama", vocab_size=vocab_size, hidden_size=64, num_layers=2, initializer_range=0.08)


def images(n: int = 2):
    out = []
    for i, size in enumerate([(41, 23), (19, 33), (28, 28)][:n]):
        im = Image.new("RGB", size, [(200, 30, 40), (20, 180, 60), (30, 40, 200)][i])
        for x in range(0, size[0], 3):
            im.putpixel((x, x % size[1]), (x * 7 % 256, 255 - x * 5 % 256, 90))
        out.append(im)
    return out


def llava_tokenizer(spm_dir, with_pad: bool):
    """The tiny SentencePiece tokenizer with `<image>` at 32000 (and `<pad>` at 32001, as llava-hf has)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(spm_dir))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    if with_pad:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer


@pytest.fixture(scope="session")
def hf_llava(tmp_path_factory, spm_tokenizer_dir):
    """A random transformers Llava (fp32) saved in the llava-hf format, with a pad-mode processor.

    Rows 32000.. of lm_head are the mean of the others (as our export writes them), so greedy decoding never
    picks them and the first 32000 rows are a model LLaVA's own format can hold too.
    """
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaImageProcessor,
        LlavaProcessor,
    )

    torch.manual_seed(0)
    config = LlavaConfig(vision_config=tiny_clip_vision_config(), text_config=tiny_text_config(32064),
                         image_token_index=32000, image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        head = model.lm_head.weight
        head[TEXT_VOCAB:] = head[:TEXT_VOCAB].mean(0)
    directory = tmp_path_factory.mktemp("llava_hf") / "tiny-llava-hf"
    model.save_pretrained(str(directory))
    images_proc = LlavaImageProcessor(do_pad=True, size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                      do_center_crop=False, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=images_proc, tokenizer=llava_tokenizer(spm_tokenizer_dir, True),
                               patch_size=PATCH, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    processor.save_pretrained(str(directory))
    return model, directory


def llava_original_state(hf_model, *, with_tower: bool) -> dict:
    """The Llava's weights under LLaVA's LlavaLlamaForCausalLM names (text vocabulary only, as LLaVA-1.5)."""
    state = {}
    for k, v in hf_model.model.language_model.state_dict().items():
        state[f"model.{k}"] = v[:TEXT_VOCAB].clone() if k == "embed_tokens.weight" else v.clone()
    state["lm_head.weight"] = hf_model.lm_head.weight[:TEXT_VOCAB].clone()
    for k, v in hf_model.model.multi_modal_projector.state_dict().items():
        state["model.mm_projector." + k.replace("linear_1.", "0.").replace("linear_2.", "2.")] = v.clone()
    for layer in range(hf_model.config.text_config.num_hidden_layers):  # what transformers 4.31 saved too
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    if with_tower:
        for k, v in hf_model.model.vision_tower.state_dict().items():
            key = k if k.startswith("vision_model.") else f"vision_model.{k}"
            state[f"model.vision_tower.vision_tower.{key}"] = v.clone()
    return state


def llava_original_config(hf_model, vision_tower: str, **overrides) -> dict:
    text = hf_model.config.text_config.to_dict()
    config = {k: text[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                   "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "bos_token_id",
                                   "eos_token_id", "hidden_act", "initializer_range")}
    config.update({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", "vocab_size": TEXT_VOCAB,
        "pad_token_id": 0, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.31.0", "use_cache": True, "pretraining_tp": 1, "rope_scaling": None,
        "freeze_mm_mlp_adapter": False, "image_aspect_ratio": "pad", "image_grid_pinpoints": None,
        "mm_hidden_size": hf_model.config.vision_config.hidden_size, "mm_projector_type": "mlp2x_gelu",
        "mm_resampler_type": None, "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2, "mm_vision_tower": vision_tower,
        "tune_mm_mlp_adapter": False, "tune_mm_vision_resampler": False, "unfreeze_mm_vision_tower": False,
        "use_mm_proj": True, "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right",
    })
    config.update(overrides)
    return config


def write_llava_original(directory: Path, hf_model, spm_dir, *, with_tower: bool, sharded: bool, vision_tower: str,
                         config_overrides: dict | None = None, state_edit=None) -> Path:
    """A checkpoint as LLaVA's training script saves it: config.json, .bin shards + index (or one safetensors)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    state = llava_original_state(hf_model, with_tower=with_tower)
    if state_edit is not None:
        state_edit(state)
    config = llava_original_config(hf_model, vision_tower, **(config_overrides or {}))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if sharded:
        names = sorted(state)
        half = len(names) // 2
        weight_map = {}
        for i, chunk in enumerate((names[:half], names[half:]), start=1):
            file = f"pytorch_model-0000{i}-of-00002.bin"
            torch.save({k: state[k] for k in chunk}, directory / file)
            weight_map.update({k: file for k in chunk})
        (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    tokenizer = llava_tokenizer(spm_dir, with_pad=False)
    tokenizer = type(tokenizer).from_pretrained(str(spm_dir))  # LLaVA-1.5's tokenizer has no <image>
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def clip_tower_dir(hf_llava, tmp_path_factory):
    """The Llava's vision tower saved as a transformers CLIPVisionModel (what mm_vision_tower names)."""
    from transformers import CLIPVisionModel

    hf_model, _ = hf_llava
    directory = tmp_path_factory.mktemp("clip") / "tiny-clip-vision"
    tower = CLIPVisionModel(hf_model.config.vision_config)
    tower.load_state_dict(hf_model.model.vision_tower.state_dict())
    tower.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def ours_clip(tmp_path_factory, tiny_llm_dirs, spm_tokenizer_dir):
    """Our tiny model with a CLIP tower (saved in the checkpoint), projector perturbed, saved; (dir, tower dir)."""
    from transformers import AutoTokenizer

    from mllm import TowerSpec, build_model, save_pretrained
    from vision_tower import build_vision_tower, from_hf_clip_config

    root = tmp_path_factory.mktemp("ours_clip")
    torch.manual_seed(1)
    tower = build_vision_tower(from_hf_clip_config(tiny_clip_vision_config().to_dict(), name="tiny-clip"))
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tower.save_pretrained(root / "tower")
    model, processor = build_model(str(tiny_llm_dirs("llama")), tower=TowerSpec(checkpoint=str(root / "tower"), config=None,
                                                                               name="tiny-clip"),
                                   tokenizer=AutoTokenizer.from_pretrained(str(spm_tokenizer_dir)), dtype="fp32")
    return save_pretrained(model, processor, root / "ckpt")


def compare_with_hf(model, processor, hf_model, *, images_in, question="<image>\nWhat is in the picture?",
                    max_new_tokens=8, input_ids=None):
    """(max |logit difference| over our vocabulary, our greedy tokens, transformers' greedy tokens) on the same
    input ids and pixels (ours, from our processor, unless `input_ids` is given)."""
    batch = processor.chat_batch([[{"from": "human", "value": question}]], [images_in])
    ids, mask, pixels = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    if input_ids is not None:
        ids, mask = input_ids, torch.ones_like(input_ids)
    with torch.no_grad():
        ours = model(ids, mask, pixels, return_logits=True).logits
        theirs = hf_model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    vocab = ours.shape[-1]
    assert bool((theirs[..., vocab:] <= theirs[..., :vocab].max(-1, keepdim=True).values).all())
    diff = (ours - theirs[..., :vocab]).abs().max().item()
    print(f"max |logit difference| {diff:.3g}")  # shown with pytest -s
    ours_new = model.generate(ids, mask, pixels, max_new_tokens=max_new_tokens)[0].tolist()
    hf_new = hf_model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=max_new_tokens,
                               do_sample=False)[0, ids.shape[1]:].tolist()
    return diff, ours_new, hf_new


@pytest.fixture(scope="session")
def compare():
    return compare_with_hf
