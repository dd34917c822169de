"""Model FLOPs of a training step, for MFU, and the dense bf16 peak of the GPU they ran on.

Counted from the modules themselves (every `nn.Linear`, 4-bit ones included, by in × out features), so the
numbers follow the model actually built. What a step must compute, with T real (unpadded) tokens:

* decoder linears, N weights (input embedding excluded: a lookup, not a matmul): forward 2·N·T; backward
  2·N·T for the input gradients (needed below every layer: LoRA and the projector sit under them) plus
  2·N·T for the weight gradients only when the LLM itself is trained. Frozen base: 4·N·T; trained: 6·N·T.
* LoRA adapters, N_lora weights: always trained, 6·N_lora·T.
* lm_head (d·V): applied only at labelled positions T_label (the loss never materialises other logits):
  4·d·V·T_label frozen, 6·d·V·T_label trained.
* causal attention per layer and sequence of length L: forward QKᵀ and AV over the L(L+1)/2 query-key pairs
  the causal mask keeps, 2·d_attn FLOPs per pair each, so 2·d_attn·L(L+1); backward twice the forward.
* projector (trained): 6·N_proj·T_img; frozen vision tower, forward only: 2·N_tower·(1+P) per image for the
  blocks that run plus the patch embedding (2·N_patch·P) and full attention 4·d·(1+P)² per block.

Gradient checkpointing recomputes the decoder forward (2·N·T + 2·N_lora·T + attention forward): counted in
hardware FLOPs (HFU), not in model FLOPs (MFU), as in the PaLM paper's definition.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

FORMULA = (
    "MFU = model FLOPs per step / step time / dense bf16 peak. Model FLOPs = decoder linears (4 if frozen, 6 if "
    "trained)·N·T + 6·N_lora·T + lm_head (4 frozen, 6 trained)·d·V·T_label + attention 3·Σ_layers Σ_rows "
    "2·d_attn·L(L+1) + projector 6·N_proj·T_img + frozen tower forward (2·N_tower·(1+P) + 2·N_patch·P + "
    "4·d·(1+P)² per block) per image. N excludes the input embedding; T counts real (unpadded) tokens; lm_head runs "
    "only at labelled positions; checkpointing recomputation is excluded (HFU adds 2·N·T + 2·N_lora·T + the "
    "attention forward)."
)

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s, by torch.cuda.get_device_name().
# The same chip differs by board: the H100 PCIe and NVL run lower clocks and power than the SXM part.
PEAK_BF16_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.4,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.5,
    "NVIDIA H100 NVL": 835.5,
    "NVIDIA H200": 989.4,  # H200 SXM
    "NVIDIA H200 NVL": 835.5,
    "NVIDIA GH200 480GB": 989.4,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA L40S": 362.05,
    "NVIDIA L4": 121.0,
}


def peak_tflops(device_name: str) -> float | None:
    """The datasheet peak for this exact device name; None when unknown (never a guess from a family name)."""
    return PEAK_BF16_TFLOPS.get(device_name.strip())


@dataclass
class LLMCounts:
    """Matmul weights of a causal LM by role, and what its attention costs."""

    base: int  # decoder linears (frozen or trained), LoRA and lm_head excluded
    lora: int  # LoRA A and B matrices
    head: int  # lm_head in × out
    layers: int
    attn_dim: int  # num_heads × head_dim (the width of Q, K·V products)


@dataclass
class TowerCounts:
    """Matmul weights of the blocks a tower runs, and its geometry."""

    blocks: int  # linears of the blocks that run (up to select_layer)
    patch_embed: int  # conv / linear weights of the patch embedding
    layers: int  # blocks that run
    width: int
    tokens: int  # 1 + patches (CLS included) per image
    patches: int


def _linear_size(module: nn.Module) -> int:
    return int(module.in_features) * int(module.out_features)


def count_llm(llm: nn.Module) -> LLMCounts:
    """Count `llm`'s matmul weights (any peft wrapper, 4-bit or not) from its modules and config."""
    causal_lm = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    head = causal_lm.get_output_embeddings()
    base = lora = 0
    for name, module in causal_lm.named_modules():
        if not isinstance(module, nn.Linear) or module is head:
            continue
        if "lora_" in name:
            lora += _linear_size(module)
        else:
            base += _linear_size(module)
    config = causal_lm.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return LLMCounts(base=base, lora=lora, head=_linear_size(head), layers=config.num_hidden_layers,
                     attn_dim=heads * head_dim)


def count_tower(tower) -> TowerCounts:
    """Count the matmul weights a `vision_tower.VisionTower` uses for its selected layer."""
    run = tower.layer_index
    blocks = sum(_linear_size(m) for block in tower.blocks[:run] for m in block.modules() if isinstance(m, nn.Linear))
    in_blocks = {id(m) for block in tower.blocks for m in block.modules()}
    patch = sum(m.weight.numel() for m in tower.modules()
                if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in in_blocks)
    return TowerCounts(blocks=blocks, patch_embed=patch, layers=run, width=tower.hidden_size,
                       tokens=tower.num_patches + tower.num_prefix_tokens, patches=tower.num_patches)


def causal_attention_forward(layers: int, attn_dim: int, seq_lens: list[int]) -> int:
    """QKᵀ and AV over the pairs a causal mask keeps: 2·d_attn·L(L+1) per layer and sequence."""
    return layers * sum(2 * attn_dim * n * (n + 1) for n in seq_lens)


def tower_forward(tower: TowerCounts, images: int) -> int:
    per_image = (2 * tower.blocks * tower.tokens + 2 * tower.patch_embed * tower.patches
                 + tower.layers * 4 * tower.width * tower.tokens ** 2)
    return images * per_image


def train_step_flops(llm: LLMCounts, *, seq_lens: list[int], label_tokens: int, train_llm: bool = False,
                     projector_params: int = 0, image_tokens: int = 0, tower: TowerCounts | None = None,
                     images: int = 0, checkpointing: bool = False) -> dict:
    """Model and hardware FLOPs of one optimizer step over a micro-batch (see the module docstring)."""
    tokens = sum(seq_lens)
    per_weight = 6 if train_llm else 4
    attention_fwd = causal_attention_forward(llm.layers, llm.attn_dim, seq_lens)
    parts = {
        "llm_linear": per_weight * llm.base * tokens,
        "lora": 6 * llm.lora * tokens,
        "lm_head": per_weight * llm.head * label_tokens,
        "llm_attention": 3 * attention_fwd,
        "projector": 6 * projector_params * image_tokens,
        "tower": tower_forward(tower, images) if tower is not None else 0,
    }
    model = sum(parts.values())
    recompute = (2 * llm.base * tokens + 2 * llm.lora * tokens + attention_fwd) if checkpointing else 0
    return {"parts": parts, "model": model, "hardware": model + recompute, "tokens": tokens,
            "label_tokens": label_tokens}


def utilisation(flops: dict, step_s: float, peak: float | None) -> dict:
    """MFU and HFU for `flops` (from train_step_flops) done in `step_s` seconds on a `peak` TFLOP/s GPU."""
    achieved = flops["model"] / step_s / 1e12
    return {
        "model_tflops_per_s": achieved,
        "mfu": achieved / peak if peak else None,
        "hfu": flops["hardware"] / step_s / 1e12 / peak if peak else None,
    }


def as_dict(counts) -> dict:
    return asdict(counts)
