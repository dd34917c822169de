"""Configs: presets as LLM2CLIP defines them, EVA-CLIP vision_cfg / HF CLIP conversion, JSON round trips."""
import json

import pytest

from vision_tower import PRESETS, VisionTowerConfig, from_eva_clip_vision_cfg, from_hf_clip_config
from vision_tower.config import resolve_config

# eva_clip/model_configs/EVA02-CLIP-L-14-336.json and EVA02-CLIP-B-16.json of microsoft/LLM2CLIP, verbatim
L14_336 = {"embed_dim": 1280, "vision_cfg": {
    "image_size": 336, "layers": 24, "width": 1024, "drop_path_rate": 0, "head_width": 64, "mlp_ratio": 2.6667,
    "patch_size": 14, "eva_model_name": "eva-clip-l-14-336", "xattn": True, "fusedLN": True, "rope": True,
    "pt_hw_seq_len": 16, "intp_freq": True, "naiveswiglu": True, "subln": True}}
B16 = {"image_size": 224, "layers": 12, "width": 768, "head_width": 64, "patch_size": 16, "mlp_ratio": 2.6667,
       "eva_model_name": "eva-clip-b-16-X", "drop_path_rate": 0.0, "xattn": True, "fusedLN": True, "rope": True,
       "pt_hw_seq_len": 16, "intp_freq": True, "naiveswiglu": True, "subln": True}


def test_default_preset_is_llm2clip_eva02_l14_336():
    p = PRESETS["llm2clip-eva02-l-14-336"]
    assert (p.arch, p.image_size, p.patch_size, p.hidden_size, p.num_layers, p.num_heads, p.intermediate_size) == \
        ("eva02", 336, 14, 1024, 24, 16, 2730)
    assert (p.layer_norm_eps, p.rope, p.rope_pt_grid, p.grid_size, p.head_dim) == (1e-6, True, 16, 24, 64)
    assert p.hub_id == "microsoft/LLM2CLIP-EVA02-L-14-336" and p.hub_filename == "LLM2CLIP-EVA02-L-14-336.pt"
    assert PRESETS["openai-clip-vit-l-14-336"].hub_id == "openai/clip-vit-large-patch14-336"
    assert PRESETS["llm2clip-openai-l-14-336"].hub_id == "microsoft/LLM2CLIP-Openai-L-14-336"
    assert set(PRESETS) == {"llm2clip-eva02-l-14-336", "llm2clip-eva02-l-14-224", "llm2clip-eva02-b-16",
                            "openai-clip-vit-l-14-336", "llm2clip-openai-l-14-336", "llm2clip-siglip2-so400m-14-224"}


def test_presets_equal_their_eva_clip_model_configs():
    assert from_eva_clip_vision_cfg(L14_336).structure() == PRESETS["llm2clip-eva02-l-14-336"].structure()
    l224 = dict(L14_336["vision_cfg"], image_size=224)
    assert from_eva_clip_vision_cfg(l224).structure() == PRESETS["llm2clip-eva02-l-14-224"].structure()
    b16 = from_eva_clip_vision_cfg(B16)
    assert b16.structure() == PRESETS["llm2clip-eva02-b-16"].structure()
    assert (b16.intermediate_size, b16.num_heads, b16.grid_size) == (2048, 12, 14)


def test_clip_vision_cfg_and_hf_config():
    openai = {"image_size": 336, "layers": 24, "width": 1024, "patch_size": 14}  # OpenaiCLIP-L-14-336.json
    cfg = from_eva_clip_vision_cfg({"embed_dim": 1280, "quick_gelu": True, "vision_cfg": openai})
    assert cfg.structure() == PRESETS["openai-clip-vit-l-14-336"].structure()
    assert from_eva_clip_vision_cfg(openai).hidden_act == "gelu"  # EVA-CLIP's default without quick_gelu
    hf = {"model_type": "clip", "vision_config": {"hidden_size": 1024, "intermediate_size": 4096,
                                                  "num_hidden_layers": 24, "num_attention_heads": 16,
                                                  "image_size": 336, "patch_size": 14}}
    assert from_hf_clip_config(hf).structure() == PRESETS["openai-clip-vit-l-14-336"].structure()
    assert resolve_config(hf).arch == "clip"


@pytest.mark.parametrize("change,match", [
    ({"postnorm": True}, "postnorm"),
    ({"subln": False}, "EVA01"),
    ({"global_average_pool": True}, "global_average_pool"),
    ({"intp_freq": False}, "pt_hw_seq_len"),
    ({"typo_key": 1}, "unknown key"),
    ({"timm_model_name": "vit_base"}, "timm"),
    ({"head_width": 48}, "divisible"),
])
def test_unsupported_vision_cfg_is_refused(change, match):
    with pytest.raises(ValueError, match=match):
        from_eva_clip_vision_cfg(dict(L14_336["vision_cfg"], **change))


def test_round_trips(tmp_path):
    cfg = PRESETS["llm2clip-eva02-l-14-336"]
    assert VisionTowerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert resolve_config(path) == cfg
    (tmp_path / "eva.json").write_text(json.dumps(L14_336))
    assert resolve_config(tmp_path / "eva.json").structure() == cfg.structure()
    assert resolve_config("llm2clip-eva02-b-16") is PRESETS["llm2clip-eva02-b-16"]


def test_validation_errors(tmp_path):
    with pytest.raises(ValueError, match="arch"):
        VisionTowerConfig(arch="vit")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VisionTowerConfig(image_size=300)
    with pytest.raises(ValueError, match="num_heads"):
        VisionTowerConfig(num_heads=7)
    with pytest.raises(ValueError, match="unknown VisionTowerConfig field"):
        VisionTowerConfig.from_dict({"arch": "eva02", "widht": 3})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="could not read"):
        resolve_config(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not recognised"):
        resolve_config({"foo": 1})
