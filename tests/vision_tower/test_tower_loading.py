"""Every checkpoint format round-trips through load_vision_tower; bad checkpoints give named errors."""
import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionModel

from vision_tower import (
    PRESETS, VisionCheckpointError, VisionTowerConfig, VisionTowerLoadError, build_vision_tower,
    from_eva_clip_vision_cfg, load_vision_tower,
)
from vision_tower.checkpoint import Canonical
from vision_tower.loader import match_preset
from vt_reference import eva_forward, random_eva_clip_state_dict, vision_cfg

CLIP_CFG = {"image_size": 56, "layers": 2, "width": 64, "head_width": 16, "patch_size": 14}


class NotATensor:  # module level so torch.save can pickle it by reference
    pass


def _close_to_ref(tower, sd, sizes, pixels, atol=2e-5):
    with torch.no_grad():
        _, states = tower(pixels, output_hidden_states=True)
    ref = eva_forward(sd, sizes, pixels)
    for a, b in zip(states, ref):
        assert (a.double() - b).abs().max() <= atol * max(1.0, b.abs().max().item())


def _hf_clip(seed=0):
    torch.manual_seed(seed)
    cfg = from_eva_clip_vision_cfg(CLIP_CFG, quick_gelu=True)
    model = build_vision_tower(cfg).model  # a plain transformers CLIPVisionModel
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return cfg, model


def _hf_states(model, pixels):
    with torch.no_grad():
        return CLIPVisionModel.forward(model, pixel_values=pixels, output_hidden_states=True).hidden_states


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("arch", ["eva02", "clip"])
def test_save_pretrained_round_trip(arch, tiny, tmp_path, pixels):
    cfg = from_eva_clip_vision_cfg(vision_cfg(tiny) if arch == "eva02" else CLIP_CFG)
    torch.manual_seed(0)
    tower = build_vision_tower(cfg, select_layer=-1, select_feature="cls_patch")
    tower.save_pretrained(tmp_path / "saved")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "saved" / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    assert ("blocks.0.mlp.w1.weight" in keys) if arch == "eva02" else ("encoder.layers.0.mlp.fc1.weight" in keys)
    again = load_vision_tower(tmp_path / "saved", select_layer=-1, select_feature="cls_patch")
    assert again.config == tower.config
    with torch.no_grad():
        assert torch.equal(again(pixels), tower(pixels))
    same = load_vision_tower(tmp_path / "saved", config=cfg.replace(name="renamed"))
    assert same.config.name == "renamed"
    with pytest.raises(VisionCheckpointError, match="contradicts"):
        load_vision_tower(tmp_path / "saved", config=cfg.replace(layer_norm_eps=1e-3))


@pytest.mark.parametrize("suffix,prefix,wrapper", [
    (".safetensors", "visual.", None),
    (".pt", "visual.", "state_dict"),
    (".bin", "module.visual.", "module"),
    (".pth", "", None),
    (".pt", "model.visual.", "model"),
])
def test_eva_clip_single_file(tiny, tiny_cfg_path, tmp_path, pixels, suffix, prefix, wrapper):
    sd = random_eva_clip_state_dict(tiny, seed=5)
    full = {prefix + k: v for k, v in sd.items()}
    full.update({"logit_scale": torch.tensor(4.6), "text.proj.0.weight": torch.randn(4, 4)})
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".safetensors":
        save_file(full, str(path))
    else:
        torch.save({wrapper: full, "epoch": 3} if wrapper else full, path)
    tower = load_vision_tower(path, config=tiny_cfg_path)
    _close_to_ref(tower, sd, tiny, pixels)
    as_dict = load_vision_tower(path, config=json.loads(tiny_cfg_path.read_text()))
    assert as_dict.config == tower.config


def test_upstream_eva_clip_bias_names(tiny, tiny_cfg_path, tmp_path, pixels):
    sd = random_eva_clip_state_dict(tiny, seed=17)
    renamed = {k.replace("attn.q_proj.bias", "attn.q_bias").replace("attn.v_proj.bias", "attn.v_bias"): v
               for k, v in sd.items()}
    torch.save({"module": {"visual." + k: v for k, v in renamed.items()}}, tmp_path / "EVA02_CLIP_test.pt")
    _close_to_ref(load_vision_tower(tmp_path / "EVA02_CLIP_test.pt", config=tiny_cfg_path), sd, tiny, pixels)


def test_fp16_pt_like_the_hub_file(tiny, tiny_cfg_path, tmp_path, pixels):
    sd = random_eva_clip_state_dict(tiny, seed=6, dtype=torch.float16)
    torch.save({"visual." + k: v for k, v in sd.items()}, tmp_path / "LLM2CLIP-test.pt")
    tower = load_vision_tower(tmp_path / "LLM2CLIP-test.pt", config=tiny_cfg_path)
    assert tower.dtype == torch.float32
    _close_to_ref(tower, sd, tiny, pixels)  # rope tables in fp16 are accepted too


def test_timm_eva_layout(tiny, tmp_path, pixels):
    cfg = from_eva_clip_vision_cfg(vision_cfg(tiny))
    from functools import partial
    from timm.layers import LayerNorm
    from timm.models.eva import Eva
    torch.manual_seed(1)
    timm_model = Eva(img_size=56, patch_size=14, num_classes=0, global_pool="", embed_dim=64, depth=3, num_heads=4,
                     qkv_fused=False, mlp_ratio=170.5 / 64, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True,
                     use_rot_pos_emb=True, ref_feat_shape=(6, 6), norm_layer=partial(LayerNorm, eps=1e-6)).eval()
    save_file({"visual.trunk." + k: v for k, v in timm_model.state_dict().items()}, str(tmp_path / "t.safetensors"))
    tower = load_vision_tower(tmp_path / "t.safetensors", config=cfg, select_feature="cls_patch")
    with torch.no_grad():
        want = timm_model.forward_intermediates(pixels, indices=[1], output_fmt="NLC", intermediates_only=True,
                                                return_prefix_tokens=True)[0]
        assert torch.allclose(tower(pixels), torch.cat([want[1], want[0]], dim=1), atol=1e-5)


def _to_hf_evaclip(sd):
    out = {}
    ren = {"norm1.": "layer_norm1.", "norm2.": "layer_norm2.", "attn.proj.": "self_attn.out_proj.",
           "attn.inner_attn_ln.": "self_attn.inner_attn_ln.", "attn.q_proj.": "self_attn.q_proj.",
           "attn.k_proj.": "self_attn.k_proj.", "attn.v_proj.": "self_attn.v_proj.", "mlp.w1.": "mlp.fc1.",
           "mlp.w2.": "mlp.fc2.", "mlp.w3.": "mlp.fc3.", "mlp.ffn_ln.": "mlp.ffn_ln."}
    for k, v in sd.items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            src = next(s for s in ren if rest.startswith(s))
            out[f"vision_model.encoder.layers.{i}.{ren[src]}{rest[len(src):]}"] = v
        elif k == "cls_token":
            out["vision_model.embeddings.class_embedding"] = v.reshape(-1)
        elif k == "pos_embed":
            out["vision_model.embeddings.position_embedding.weight"] = v[0]
        elif k.startswith("patch_embed.proj."):
            out["vision_model.embeddings.patch_embedding." + k.split(".")[-1]] = v
        elif k.startswith("norm."):
            out["vision_model.post_layernorm." + k.split(".")[-1]] = v
        elif k.startswith("head."):
            out["visual_projection." + k.split(".")[-1]] = v
    return out


def test_hf_evaclip_layout_in_a_directory(tiny, tiny_cfg_path, tmp_path, pixels):
    sd = random_eva_clip_state_dict(tiny, seed=7, rope=False)
    d = tmp_path / "hf"
    d.mkdir()
    torch.save(_to_hf_evaclip(sd), d / "pytorch_model.bin")
    (d / "config.json").write_text(json.dumps({"model_type": "evaclip", "vision_config": {"hidden_size": 64}}))
    _close_to_ref(load_vision_tower(d, config=tiny_cfg_path), sd, tiny, pixels)
    with pytest.raises(VisionCheckpointError, match="cannot tell which tower"):
        load_vision_tower(d)  # its config.json is not one this loader reads, and no preset has these sizes
    with_pre_ln = {**_to_hf_evaclip(sd), "vision_model.pre_layrnorm.weight": torch.ones(64)}
    torch.save(with_pre_ln, d / "pytorch_model.bin")
    with pytest.raises(VisionCheckpointError, match="unexpected vision key.*pre_layrnorm.weight"):
        load_vision_tower(d, config=tiny_cfg_path)  # recognised as HF EVA-CLIP; the extra LayerNorm is named


def test_directory_prefers_the_pt_ground_truth(tiny, tiny_cfg_path, tmp_path, pixels):
    good = random_eva_clip_state_dict(tiny, seed=8)
    other = random_eva_clip_state_dict(tiny, seed=9, rope=False)
    torch.save({"visual." + k: v for k, v in good.items()}, tmp_path / "LLM2CLIP-EVA02-test.pt")
    torch.save(_to_hf_evaclip(other), tmp_path / "pytorch_model.bin")
    # a CLIP-looking config.json next to EVA weights (as a remote-code repo may ship) must not take over
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": {"hidden_size": 64}}))
    _close_to_ref(load_vision_tower(tmp_path, config=tiny_cfg_path), good, tiny, pixels)
    with pytest.raises(VisionCheckpointError, match="cannot tell which tower"):
        load_vision_tower(tmp_path)


def test_hf_clip_directory_with_its_config(tmp_path, pixels):
    cfg, model = _hf_clip()
    d = tmp_path / "clip"
    d.mkdir()
    weights = {"vision_model." + k: v for k, v in model.state_dict().items()}
    weights.update({"text_model.embeddings.token_embedding.weight": torch.randn(10, 8),
                    "visual_projection.weight": torch.randn(8, 64), "logit_scale": torch.tensor(2.0)})
    save_file(weights, str(d / "model.safetensors"))
    hf_cfg = {"model_type": "clip", "vision_config": {k: v for k, v in model.config.to_dict().items()
                                                      if k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                               "num_attention_heads", "image_size", "patch_size",
                                                               "hidden_act", "layer_norm_eps")}}
    (d / "config.json").write_text(json.dumps(hf_cfg))
    tower = load_vision_tower(d, select_feature="cls_patch", select_layer=-1)
    assert tower.config.arch == "clip" and tower.config.hidden_act == "quick_gelu"
    with torch.no_grad():
        _, ours = tower(pixels, output_hidden_states=True)
    for a, b in zip(ours, _hf_states(model, pixels)):
        assert torch.allclose(a, b, atol=1e-5)


def test_openai_clip_layout(tmp_path, pixels):
    cfg, model = _hf_clip(seed=1)
    sd, out = model.state_dict(), {"logit_scale": torch.tensor(1.0), "visual.proj": torch.randn(64, 32)}
    out["visual.conv1.weight"] = sd["embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = sd["embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd["embeddings.position_embedding.weight"]
    for ln_ours, ln_openai in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for w in ("weight", "bias"):
            out[f"visual.{ln_openai}.{w}"] = sd[f"{ln_ours}.{w}"]
    for i in range(2):
        hf, oa = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for w in ("weight", "bias"):
            out[oa + f"attn.in_proj_{w}"] = torch.cat([sd[hf + f"self_attn.{n}_proj.{w}"] for n in "qkv"])
            for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{oa}{a}.{w}"] = sd[f"{hf}{b}.{w}"]
    torch.save({"state_dict": out}, tmp_path / "openai.pt")
    tower = load_vision_tower(tmp_path / "openai.pt", config=cfg)
    with torch.no_grad():
        _, ours = tower(pixels, output_hidden_states=True)
    for a, b in zip(ours, _hf_states(model, pixels)):
        assert torch.allclose(a, b, atol=1e-5)


def test_dtype_argument(tiny, tmp_path):
    torch.manual_seed(0)
    build_vision_tower(from_eva_clip_vision_cfg(vision_cfg(tiny))).save_pretrained(tmp_path)
    tower = load_vision_tower(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in tower.parameters()} == {torch.bfloat16}
    assert not tower.training and not any(p.requires_grad for p in tower.parameters())


# ---------------------------------------------------------------------------------------------- named errors
def _save(sd, path, prefix="visual."):
    save_file({prefix + k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def test_missing_and_unexpected_keys_are_named(tiny, tiny_cfg_path, tmp_path):
    sd = random_eva_clip_state_dict(tiny, seed=10)
    del sd["blocks.1.attn.q_proj.weight"]
    sd["blocks.0.attn.extra.weight"] = torch.zeros(2)
    with pytest.raises(VisionCheckpointError) as info:
        load_vision_tower(_save(sd, tmp_path / "x.safetensors"), config=tiny_cfg_path)
    assert info.value.missing == ["blocks.1.attn.q_proj.weight"]
    assert info.value.unexpected == ["blocks.0.attn.extra.weight"]
    assert "blocks.1.attn.q_proj.weight" in str(info.value) and "blocks.0.attn.extra.weight" in str(info.value)


def test_shape_mismatch_and_wrong_arch(tiny, tmp_path):
    path = _save(random_eva_clip_state_dict(tiny, seed=11), tmp_path / "x.safetensors")
    bigger = vision_cfg(dict(tiny, mlp=200))
    with pytest.raises(VisionCheckpointError, match=r"blocks\.0\.mlp\.w1\.weight: checkpoint \(170, 64\) vs tower \(200, 64\)"):
        load_vision_tower(path, config=bigger)
    with pytest.raises(VisionCheckpointError, match="holds a eva02 tower"):
        load_vision_tower(path, config=from_eva_clip_vision_cfg(CLIP_CFG))


def test_rope_tables_reveal_a_wrong_grid_config(tiny, tmp_path):
    path = _save(random_eva_clip_state_dict(tiny, seed=12), tmp_path / "x.safetensors")
    with pytest.raises(VisionCheckpointError, match="RoPE"):
        load_vision_tower(path, config=vision_cfg(dict(tiny, pt_grid=16)))


@pytest.mark.parametrize("keys,match", [
    ({"foo.weight": (2, 2)}, "no vision tower recognised"),
    ({"visual.patch_embed.proj.weight": (4, 3, 2, 2), "visual.blocks.0.mlp.fc1.weight": (4, 4)}, "EVA01"),
])
def test_unrecognised_checkpoints(tmp_path, tiny_cfg_path, keys, match):
    path = tmp_path / "x.safetensors"
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(path))
    with pytest.raises(VisionCheckpointError, match=match):
        load_vision_tower(path, config=tiny_cfg_path)


def test_two_towers_is_an_error(tiny, tiny_cfg_path, tmp_path):
    sd = random_eva_clip_state_dict(tiny, seed=13)
    both = {**{"visual." + k: v for k, v in sd.items()}, **{"teacher.visual." + k: v.clone() for k, v in sd.items()}}
    save_file(both, str(tmp_path / "x.safetensors"))
    with pytest.raises(VisionCheckpointError, match="several vision towers"):
        load_vision_tower(tmp_path / "x.safetensors", config=tiny_cfg_path)


def test_unsafe_pickle_is_refused(tiny, tiny_cfg_path, tmp_path):
    sd = {"visual." + k: v for k, v in random_eva_clip_state_dict(tiny, seed=14).items()}
    torch.save({"state_dict": sd, "extra": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(VisionTowerLoadError, match="refusing to unpickle"):
        load_vision_tower(tmp_path / "evil.pt", config=tiny_cfg_path)


def test_bad_paths(tmp_path, tiny, tiny_cfg_path):
    with pytest.raises(VisionTowerLoadError, match="not an existing file"):
        load_vision_tower(tmp_path / "nope" / "x.pt", config=tiny_cfg_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VisionTowerLoadError, match="no weight files"):
        load_vision_tower(tmp_path / "empty", config=tiny_cfg_path)
    (tmp_path / "two").mkdir()
    for name in ("a.pt", "b.pt"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "two" / name)
    with pytest.raises(VisionTowerLoadError, match="several .pt"):
        load_vision_tower(tmp_path / "two", config=tiny_cfg_path)
    (tmp_path / "garbage.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(VisionTowerLoadError, match="could not read"):
        load_vision_tower(tmp_path / "garbage.safetensors", config=tiny_cfg_path)
    path = _save(random_eva_clip_state_dict(tiny, seed=15), tmp_path / "anon.safetensors")
    with pytest.raises(VisionCheckpointError, match="cannot tell which tower"):
        load_vision_tower(path)


def _meta_canonical(arch, shapes, rope=None):
    c = Canonical(layout="test", prefix="", arch=arch,
                  tensors={k: torch.empty(s, device="meta") for k, s in shapes.items()})
    if rope:
        c.rope_tables["rope.freqs_cos"] = torch.empty(rope, device="meta")
    return c


def test_config_inferred_from_full_size_shapes():
    def eva(width, depth, mlp, patch, tokens):
        shapes = {"patch_embed.proj.weight": (width, 3, patch, patch), "pos_embed": (1, tokens, width)}
        for i in range(depth):
            shapes[f"blocks.{i}.mlp.w1.weight"] = (mlp, width)
            shapes[f"blocks.{i}.attn.q_proj.bias"] = (width,)
        return shapes

    assert match_preset(_meta_canonical("eva02", eva(1024, 24, 2730, 14, 577), rope=(576, 64))).name == \
        "llm2clip-eva02-l-14-336"
    assert match_preset(_meta_canonical("eva02", eva(1024, 24, 2730, 14, 257))).name == "llm2clip-eva02-l-14-224"
    assert match_preset(_meta_canonical("eva02", eva(768, 12, 2048, 16, 197))).name == "llm2clip-eva02-b-16"
    clip = {"embeddings.patch_embedding.weight": (1024, 3, 14, 14), "embeddings.position_embedding.weight": (577, 1024)}
    clip.update({f"encoder.layers.{i}.mlp.fc1.weight": (4096, 1024) for i in range(24)})
    chosen = match_preset(_meta_canonical("clip", clip))  # two presets share this structure: keep it, drop the name
    assert chosen.structure() == PRESETS["openai-clip-vit-l-14-336"].structure() and chosen.name is None


# ---------------------------------------------------------------------------------------------- hub
def test_hub_offline_gives_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    for args in ((), ("nobody-here/no-such-repo",)):
        with pytest.raises(VisionTowerLoadError, match="Hugging Face Hub"):
            load_vision_tower(*args)


def test_hub_download_picks_the_right_files(monkeypatch, tiny, tmp_path, pixels):
    import huggingface_hub
    sd = random_eva_clip_state_dict(tiny, seed=16)
    repo_dir = tmp_path / "snap"
    repo_dir.mkdir()
    torch.save({"visual." + k: v for k, v in sd.items()}, repo_dir / "weights.pt")
    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, filename: calls.append((repo, filename)) or str(repo_dir / filename))
    cfg = from_eva_clip_vision_cfg(vision_cfg(tiny)).replace(hub_id="me/tiny", hub_filename="weights.pt")
    _close_to_ref(load_vision_tower(config=cfg), sd, tiny, pixels)
    assert calls == [("me/tiny", "weights.pt")]
    # the real preset's repo: its ground-truth .pt is requested and the preset is the config (tiny weights: mismatch)
    (repo_dir / "LLM2CLIP-EVA02-L-14-336.pt").write_bytes((repo_dir / "weights.pt").read_bytes())
    (repo_dir / "weights.pt").unlink()
    with pytest.raises(VisionCheckpointError, match="shape mismatch.*for config llm2clip-eva02-l-14-336|"
                                                    "for config llm2clip-eva02-l-14-336.*shape mismatch"):
        load_vision_tower("microsoft/LLM2CLIP-EVA02-L-14-336")
    assert calls[-1] == ("microsoft/LLM2CLIP-EVA02-L-14-336", "LLM2CLIP-EVA02-L-14-336.pt")
    (repo_dir / "weights.pt").write_bytes((repo_dir / "LLM2CLIP-EVA02-L-14-336.pt").read_bytes())
    (repo_dir / "LLM2CLIP-EVA02-L-14-336.pt").unlink()

    monkeypatch.setattr(huggingface_hub, "list_repo_files",
                        lambda repo: ["README.md", "config.json", "weights.pt", "pytorch_model.bin", "sub/x.pt"])
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, allow_patterns=None, **kw: calls.append(allow_patterns) or str(repo_dir))
    _close_to_ref(load_vision_tower("me/other", config=vision_cfg(tiny)), sd, tiny, pixels)
    assert calls[-1] == ["weights.pt", "config.json"]


def test_config_type_errors():
    with pytest.raises(TypeError):
        load_vision_tower("x", config=3.5)
    with pytest.raises(ValueError, match="neither a preset"):
        load_vision_tower("x", config="no-such-preset")
    assert isinstance(PRESETS["llm2clip-eva02-l-14-336"], VisionTowerConfig)
