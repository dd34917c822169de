"""The EVA02 tower against an independent float64 re-computation (tests/vision_tower/vt_reference.py)."""
import json

import pytest
import torch
from safetensors.torch import save_file

from vision_tower import PRESETS, load_vision_tower
from vt_reference import eva_forward, eva_sizes, random_eva_clip_state_dict, vision_cfg


def _load(sd, sizes, tmp_path, **kw):
    ckpt, cfg = tmp_path / "eva.safetensors", tmp_path / "vision_cfg.json"
    save_file({"visual." + k: v.contiguous() for k, v in sd.items()}, str(ckpt))
    cfg.write_text(json.dumps(vision_cfg(sizes)))
    return load_vision_tower(ckpt, config=cfg, **kw)


def _assert_states_close(ours, ref, rtol=2e-6):
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        tol = rtol * max(1.0, b.abs().max().item()) * (i + 1)
        err = (a.double() - b).abs().max().item()
        assert err <= tol, f"hidden_states[{i}] differs by {err:.3g} (tol {tol:.3g})"


@pytest.mark.parametrize("layer_scale", [False, True])
def test_all_hidden_states_match_independent_recompute(tiny, tmp_path, pixels, layer_scale):
    sd = random_eva_clip_state_dict(tiny, seed=1, layer_scale=layer_scale)
    cfg = vision_cfg(tiny)
    if layer_scale:
        cfg["ls_init_value"] = 0.5
    (tmp_path / "vision_cfg.json").write_text(json.dumps(cfg))
    save_file({"visual." + k: v for k, v in sd.items()}, str(tmp_path / "eva.safetensors"))
    tower = load_vision_tower(tmp_path / "eva.safetensors", config=tmp_path / "vision_cfg.json")
    with torch.no_grad():
        feats, states = tower(pixels, output_hidden_states=True)
    ref = eva_forward(sd, tiny, pixels)
    _assert_states_close(states, ref)
    assert torch.allclose(feats.double(), ref[-2][:, 1:], atol=1e-4)
    assert ref[-1].abs().max() > 1.0  # the comparison is not between near-zero tensors


def test_rope_interpolation_at_336(tmp_path):
    """Same RoPE as LLM2CLIP-EVA02-L-14-336 (head dim 64, 24x24 grid rescaled onto 16x16, 577 tokens)."""
    sizes = eva_sizes(image_size=336, patch_size=14, width=64, layers=2, heads=1, mlp=170, pt_grid=16)
    sd = random_eva_clip_state_dict(sizes, seed=2)
    tower = _load(sd, sizes, tmp_path)
    x = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, states = tower(x, output_hidden_states=True)
    _assert_states_close(states, eva_forward(sd, sizes, x))
    # without the 16/24 rescale the result must differ: the check is sensitive to the interpolation
    wrong = eva_forward(sd, dict(sizes, pt_grid=24), x)
    assert (states[-1].double() - wrong[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.03), (torch.float16, 0.01)])
def test_low_precision_close_to_fp32(tiny, tmp_path, pixels, dtype, tol):
    sd = random_eva_clip_state_dict(tiny, seed=3)
    fp32 = _load(sd, tiny, tmp_path)
    low = load_vision_tower(tmp_path / "eva.safetensors", config=tmp_path / "vision_cfg.json", dtype=dtype)
    assert all(p.dtype == dtype for p in low.parameters())
    with torch.no_grad():
        a, b = fp32(pixels), low(pixels)
    assert b.dtype == dtype
    rel = ((a - b.float()).norm() / a.norm()).item()
    assert rel < tol, rel


@pytest.mark.slow
def test_full_l14_336_matches_independent_recompute(tmp_path):
    """Full LLM2CLIP-EVA02-L-14-336 size (24 x 1024, MLP 2730, 577 tokens), random weights, all 25 states."""
    preset = PRESETS["llm2clip-eva02-l-14-336"]
    sizes = eva_sizes(image_size=336, patch_size=14, width=1024, layers=24, heads=16, mlp=2730, pt_grid=16,
                      embed_dim=1280)
    sd = random_eva_clip_state_dict(sizes, seed=4)
    ckpt = tmp_path / "full.safetensors"
    save_file({"visual." + k: v.contiguous() for k, v in sd.items()}, str(ckpt))
    tower = load_vision_tower(ckpt, config="llm2clip-eva02-l-14-336")
    assert tower.config.structure() == preset.structure()
    assert tower.trunk.blocks[0].mlp.fc1_g.out_features == 2730
    x = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats, states = tower(x, output_hidden_states=True)
    assert feats.shape == (1, 576, 1024) and len(states) == 25
    ref = eva_forward(sd, sizes, x)
    _assert_states_close(states, ref, rtol=5e-6)
