"""An independent, deliberately plain EVA02 (EVA-CLIP `EVAVisionTransformer`) forward for the tests.

Written from the architecture description (docs + eva_clip source semantics), in float64, from a state dict
in EVA-CLIP names, sharing no code with `vision_tower` or timm. Also generates such state dicts.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def eva_sizes(image_size=56, patch_size=14, width=64, layers=3, heads=4, mlp=170, pt_grid=16, embed_dim=32):
    return dict(image_size=image_size, patch_size=patch_size, width=width, layers=layers, heads=heads, mlp=mlp,
                pt_grid=pt_grid, embed_dim=embed_dim)


def vision_cfg(s: dict) -> dict:
    """The same sizes as an EVA-CLIP vision_cfg (mlp given as a ratio EVA-CLIP truncates back to s['mlp'])."""
    return {
        "image_size": s["image_size"], "layers": s["layers"], "width": s["width"],
        "head_width": s["width"] // s["heads"], "mlp_ratio": (s["mlp"] + 0.5) / s["width"],
        "patch_size": s["patch_size"], "eva_model_name": "eva-clip-test", "drop_path_rate": 0, "xattn": True,
        "fusedLN": True, "rope": True, "pt_hw_seq_len": s["pt_grid"], "intp_freq": True, "naiveswiglu": True,
        "subln": True,
    }


def rope_tables(grid: int, pt_grid: int, head_dim: int, theta: float = 10000.0):
    """EVA02 2-D RoPE: half of the head dims rotate with the row index, half with the column index; each axis
    has head_dim/4 frequencies theta^(-k/(head_dim/4)), each used by an interleaved pair of dims; positions
    are rescaled onto the pretraining grid: t = i * pt_grid / grid."""
    per_axis = head_dim // 2
    k = torch.arange(per_axis // 2, dtype=torch.float64)
    inv_freq = theta ** (-k / (per_axis // 2))
    t = torch.arange(grid, dtype=torch.float64) * pt_grid / grid
    ang = torch.repeat_interleave(t[:, None] * inv_freq[None, :], 2, dim=-1)  # [grid, per_axis]
    rows = ang[:, None, :].expand(grid, grid, per_axis)
    cols = ang[None, :, :].expand(grid, grid, per_axis)
    full = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
    return full.cos(), full.sin()


def rotate(x, cos, sin):
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).reshape(x.shape)
    return x * cos + rotated * sin


def random_eva_clip_state_dict(s: dict, seed: int = 0, *, rope: bool = True, head: bool = True,
                               layer_scale: bool = False, dtype=torch.float32) -> dict:
    """EVA-CLIP-named random weights (no `visual.` prefix); LayerNorms and biases are non-trivial on purpose."""
    g = torch.Generator().manual_seed(seed)
    D, L, M, P = s["width"], s["layers"], s["mlp"], s["patch_size"]
    n = (s["image_size"] // P) ** 2

    def r(*shape, std=0.05, mean=0.0):
        return (mean + std * torch.randn(*shape, generator=g)).to(dtype)

    sd = {"cls_token": r(1, 1, D, std=0.5), "pos_embed": r(1, n + 1, D, std=0.5),
          "patch_embed.proj.weight": r(D, 3, P, P, std=0.05), "patch_embed.proj.bias": r(D, std=0.1),
          "norm.weight": r(D, mean=1.0, std=0.1), "norm.bias": r(D, std=0.1)}
    if head:
        sd.update({"head.weight": r(s["embed_dim"], D), "head.bias": r(s["embed_dim"])})
    for i in range(L):
        b = f"blocks.{i}."
        for ln, dim in (("norm1", D), ("norm2", D), ("attn.inner_attn_ln", D), ("mlp.ffn_ln", M)):
            sd[b + ln + ".weight"], sd[b + ln + ".bias"] = r(dim, mean=1.0, std=0.1), r(dim, std=0.1)
        for name, (o, i_) in {"attn.q_proj": (D, D), "attn.k_proj": (D, D), "attn.v_proj": (D, D),
                              "attn.proj": (D, D), "mlp.w1": (M, D), "mlp.w2": (M, D), "mlp.w3": (D, M)}.items():
            sd[b + name + ".weight"] = r(o, i_, std=1.0 / math.sqrt(i_))
            if name != "attn.k_proj":
                sd[b + name + ".bias"] = r(o, std=0.1)
        if layer_scale:
            sd[b + "gamma_1"], sd[b + "gamma_2"] = r(D, mean=0.5, std=0.1), r(D, mean=0.5, std=0.1)
    if rope:
        cos, sin = rope_tables(s["image_size"] // P, s["pt_grid"], D // s["heads"])
        for p in ["rope."] + [f"blocks.{i}.attn.rope." for i in range(L)]:
            sd[p + "freqs_cos"], sd[p + "freqs_sin"] = cos.to(dtype), sin.to(dtype)
    return sd


def eva_forward(sd: dict, s: dict, pixels: torch.Tensor, eps: float = 1e-6) -> list[torch.Tensor]:
    """All depth+1 hidden states (embedding output first), computed in float64."""
    p = {k: v.double() for k, v in sd.items()}
    D, H, P = s["width"], s["heads"], s["patch_size"]
    hd = D // H
    x = F.conv2d(pixels.double(), p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=P)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([p["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + p["pos_embed"]
    cos, sin = rope_tables(s["image_size"] // P, s["pt_grid"], hd)
    states = [x]

    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], p[name + ".weight"], p[name + ".bias"], eps)

    def lin(t, name, bias=True):
        out = t @ p[name + ".weight"].T
        return out + p[name + ".bias"] if bias else out

    for i in range(s["layers"]):
        b = f"blocks.{i}."
        B, N, _ = x.shape
        h = ln(x, b + "norm1")
        q, k, v = (lin(h, b + "attn.q_proj"), lin(h, b + "attn.k_proj", bias=False), lin(h, b + "attn.v_proj"))
        q, k, v = (t.reshape(B, N, H, hd).transpose(1, 2) for t in (q, k, v))
        q = torch.cat([q[:, :, :1], rotate(q[:, :, 1:], cos, sin)], dim=2)  # CLS is not rotated
        k = torch.cat([k[:, :, :1], rotate(k[:, :, 1:], cos, sin)], dim=2)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(B, N, D)
        o = lin(ln(o, b + "attn.inner_attn_ln"), b + "attn.proj")
        x = x + (p[b + "gamma_1"] * o if b + "gamma_1" in p else o)
        h = ln(x, b + "norm2")
        hidden = F.silu(lin(h, b + "mlp.w1")) * lin(h, b + "mlp.w2")
        o = lin(ln(hidden, b + "mlp.ffn_ln"), b + "mlp.w3")
        x = x + (p[b + "gamma_2"] * o if b + "gamma_2" in p else o)
        states.append(x)
    return states
