"""MFU arithmetic of the GPU check: hand-computed values, module counting against torch's own FLOP counter."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from gpu_check_lib.flops import (  # noqa: E402
    LLMCounts, TowerCounts, count_llm, count_tower, peak_tflops, train_step_flops, utilisation,
)

from mllm import LoraSpec  # noqa: E402
from mllm.constants import IGNORE_INDEX  # noqa: E402

# tiny Llama (mllm.tiny): hidden 64, 2 layers, 4 heads of 16, 2 KV heads, MLP 128, vocabulary 32000
TINY_LAYER = 64 * 64 + 2 * (64 * 32) + 64 * 64 + 3 * (64 * 128)  # q, k+v (2 KV heads x 16), o, gate/up/down
TINY_LORA_LAYER = 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)  # r=4 x (in + out) per adapted linear


def test_step_flops_match_hand_computation():
    llm = LLMCounts(base=100, lora=10, head=50, layers=2, attn_dim=8)
    tower = TowerCounts(blocks=20, patch_embed=5, layers=1, width=4, tokens=3, patches=2)
    flops = train_step_flops(llm, seq_lens=[3, 5], label_tokens=4, projector_params=7, image_tokens=6, tower=tower,
                             images=2, checkpointing=True)
    assert flops["parts"] == {
        "llm_linear": 4 * 100 * 8,  # frozen: forward + input gradients, over 8 real tokens
        "lora": 6 * 10 * 8,
        "lm_head": 4 * 50 * 4,  # only the 4 labelled positions
        "llm_attention": 3 * 2 * (2 * 8 * 3 * 4 + 2 * 8 * 5 * 6),  # causal pairs L(L+1)/2, backward = 2 x forward
        "projector": 6 * 7 * 6,
        "tower": 2 * (2 * 20 * 3 + 2 * 5 * 2 + 4 * 4 * 9),  # forward only: blocks, patch embedding, full attention
    }
    assert flops["model"] == 3200 + 480 + 800 + 4032 + 252 + 568 == 9332
    assert flops["hardware"] == 9332 + 2 * 100 * 8 + 2 * 10 * 8 + 1344  # checkpointing re-runs the decoder forward
    trained = train_step_flops(llm, seq_lens=[3, 5], label_tokens=4, train_llm=True)
    assert trained["parts"]["llm_linear"] == 6 * 100 * 8 and trained["parts"]["lm_head"] == 6 * 50 * 4
    assert trained["hardware"] == trained["model"]  # no checkpointing, no recomputation

    use = utilisation({"model": 2e12, "hardware": 3e12}, step_s=0.5, peak=989.4)
    assert use["model_tflops_per_s"] == pytest.approx(4.0)
    assert use["mfu"] == pytest.approx(4.0 / 989.4) and use["hfu"] == pytest.approx(6.0 / 989.4)
    assert utilisation({"model": 1e12, "hardware": 1e12}, 1.0, None)["mfu"] is None


def test_peaks_by_exact_device_name():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4  # SXM
    assert peak_tflops("NVIDIA H100 PCIe") == 756.5
    assert peak_tflops("NVIDIA H100 NVL") == 835.5
    assert peak_tflops("NVIDIA H200") == 989.4
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA H100") is None  # a family name is not enough to know the board's clocks
    assert peak_tflops("Tesla T4") is None


@pytest.mark.parametrize("quantization", [None, "4bit"])
def test_llm_counts_exclude_embeddings_and_read_4bit_shapes(make_tiny_model, quantization):
    if quantization:
        pytest.importorskip("bitsandbytes")
    model, _ = make_tiny_model("llama", quantization=quantization, dtype=torch.float32,
                               lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    counts = count_llm(model.llm)
    # 4-bit weights are packed two per byte: counting numel() would halve N
    assert counts == LLMCounts(base=2 * TINY_LAYER, lora=2 * TINY_LORA_LAYER, head=64 * 32000, layers=2, attn_dim=64)
    tower = count_tower(model.vision_tower)  # tiny EVA02: 28 px / 14 = 4 patches, select_layer -2 runs 2 of 3 blocks
    block = 3 * 32 * 32 + 32 * 32 + 3 * 32 * 64  # qkv, proj, SwiGLU (fc1_g, fc1_x, fc2)
    assert tower == TowerCounts(blocks=2 * block, patch_embed=3 * 14 * 14 * 32, layers=2, width=32, tokens=5, patches=4)


def test_train_step_flops_equal_torch_flop_counter_on_a_real_step(make_tiny_model, make_images):
    """Everything but attention (torch does not count the CPU SDPA kernel) measured on a real LoRA step."""
    model, processor = make_tiny_model("llama", lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    model.train()
    batch = processor(["<image>\nWhat colour is the square here?", "<image>\nAnd what is the shape there?"],
                      [make_images(1), make_images(1)], padding_side="right")
    assert bool(batch["attention_mask"].all())
    labels = batch["input_ids"].clone()
    labels[:, :8] = IGNORE_INDEX
    with FlopCounterMode(display=False) as counter:
        model(**batch, labels=labels).loss.backward()
    images = 2
    flops = train_step_flops(
        count_llm(model.llm), seq_lens=[int(n) for n in batch["attention_mask"].sum(1)],
        label_tokens=int((labels[:, 1:] != IGNORE_INDEX).sum()),
        projector_params=sum(m.in_features * m.out_features for m in model.projector.modules()
                             if isinstance(m, torch.nn.Linear)),
        image_tokens=images * model.num_image_tokens, tower=count_tower(model.vision_tower), images=images)
    tower = count_tower(model.vision_tower)
    tower_attention = images * tower.layers * 4 * tower.width * tower.tokens ** 2
    # the projector's first layer needs no input gradient (tower features carry none): autograd skips it
    first = model.projector.layers[0]
    skipped = 2 * first.in_features * first.out_features * images * model.num_image_tokens
    expected = flops["model"] - flops["parts"]["llm_attention"] - tower_attention - skipped
    model.zero_grad(set_to_none=True)
    assert counter.get_total_flops() == expected
