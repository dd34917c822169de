"""LLM2CLIP's SigLIP2 So400m tower (no CLS token) against timm's own `vit_so400m_patch14_siglip_224`."""
import pytest
import timm
import torch

from vision_tower import PRESETS, VisionCheckpointError, VisionTowerConfig, build_vision_tower, load_vision_tower
from vision_tower.checkpoint import Canonical, detect_layout
from vision_tower.loader import match_preset
from vision_tower.registry import tower_class

TINY = dict(image_size=28, patch_size=14, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64)


def tiny_config(**changes):
    return VisionTowerConfig(arch="siglip", name="tiny-siglip", rope=False, hidden_act="gelu", **{**TINY, **changes})


def timm_reference(seed=0):
    """timm's registered so400m SigLIP model at toy width, MAP head included, with non-trivial weights."""
    torch.manual_seed(seed)
    ref = timm.create_model("vit_so400m_patch14_siglip_224", pretrained=False, img_size=28, embed_dim=32, depth=3,
                            num_heads=2, mlp_ratio=2.0).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ref


def test_preset_is_the_real_so400m_structure():
    preset = PRESETS["llm2clip-siglip2-so400m-14-224"]
    assert (preset.grid_size, preset.hidden_size, preset.num_layers, preset.hub_id) == (16, 1152, 27, None)
    with torch.device("meta"):
        ref = timm.create_model("vit_so400m_patch14_siglip_224", pretrained=False)
    ours = tower_class("siglip")(preset, device="meta")
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.startswith("attn_pool.")}
    assert {k: tuple(v.shape) for k, v in ours.canonical_state_dict().items()} == theirs
    assert ref.cls_token is None and tuple(ref.pos_embed.shape) == (1, 256, 1152)  # 16x16 patches, no CLS
    # a checkpoint without a config is recognised by its shapes
    canonical = Canonical(layout="timm_vit", prefix="", arch="siglip",
                          tensors={k: torch.empty(s, device="meta") for k, s in theirs.items()})
    assert match_preset(canonical).name == "llm2clip-siglip2-so400m-14-224"


def test_all_hidden_states_match_timm(tmp_path):
    ref = timm_reference()
    # EVA-CLIP's TimmModel stores the timm trunk under visual.trunk. (LLM2CLIP's training code)
    torch.save({"state_dict": {"visual.trunk." + k: v for k, v in ref.state_dict().items()}}, tmp_path / "siglip.pt")
    tower = load_vision_tower(tmp_path / "siglip.pt", config=tiny_config())
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats, states = tower(pixels, output_hidden_states=True)
        expected = ref.forward_intermediates(pixels, norm=False, output_fmt="NLC", intermediates_only=True)
        final = ref.forward_features(pixels)
    assert len(states) == 4 and states[0].shape == (2, 4, 32)  # 2x2 patches, no prefix token
    for ours, theirs in zip(states[1:], expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tower.trunk.norm(states[-1]), final, rtol=1e-5, atol=1e-5)
    assert torch.equal(feats, states[-2]) and tower.num_image_tokens == 4  # patch features: nothing dropped


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    tower = build_vision_tower(tiny_config(), select_layer=-1)
    tower.save_pretrained(tmp_path / "saved")
    again = load_vision_tower(tmp_path / "saved", select_layer=-1)
    assert again.config == tower.config and type(again) is type(tower)
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(again(pixels), tower(pixels))


def test_no_cls_token_means_no_cls_patch():
    tower = build_vision_tower(tiny_config())
    with pytest.raises(ValueError, match="'cls_patch' needs a CLS token; siglip towers have none"):
        tower.select_feature = "cls_patch"
    with pytest.raises(ValueError, match="needs a CLS token"):
        build_vision_tower(tiny_config(), select_feature="cls_patch")


def test_a_timm_vit_with_a_class_token_is_not_taken_for_siglip():
    keys = {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "pos_embed"}
    assert detect_layout(keys) == ("timm_vit", "")
    with pytest.raises(VisionCheckpointError, match="no vision tower recognised"):
        detect_layout(keys | {"cls_token"})


def test_spec_validation_knows_the_tower_has_no_cls_token(tmp_path):
    from mllm import ModelSpec, ModelSpecError, TowerSpec
    from mllm.validation import validate_spec

    (tmp_path / "siglip2.pt").write_bytes(b"")  # validation reads no weights: only the path must exist
    tower = TowerSpec.from_preset("llm2clip-siglip2-so400m-14-224", checkpoint=str(tmp_path / "siglip2.pt"))
    validate_spec(ModelSpec(llm=str(tmp_path), tower=tower), unfreeze_tower_blocks=26)
    bad = TowerSpec.from_preset("llm2clip-siglip2-so400m-14-224", checkpoint=str(tmp_path / "siglip2.pt"),
                                select_feature="cls_patch", select_layer=28)
    with pytest.raises(ModelSpecError, match=r"select_layer 28 is out of range for tower llm2clip-siglip2-so400m-14-224 "
                                             r"\(27 blocks: -28..27\); select_feature 'cls_patch' needs a CLS token"):
        validate_spec(ModelSpec(llm=str(tmp_path), tower=bad))
