"""VisionTower interface: layer/feature selection, early stop, freezing, gradient checkpointing, CLIP semantics."""
import pytest
import torch
from transformers import CLIPVisionModel

from vision_tower import VisionTower, build_vision_tower, from_eva_clip_vision_cfg
from vt_reference import vision_cfg

CLIP_CFG = {"image_size": 56, "layers": 3, "width": 64, "head_width": 16, "patch_size": 14}


@pytest.fixture(params=["eva02", "clip"])
def tower(request, tiny):
    cfg = from_eva_clip_vision_cfg(vision_cfg(tiny) if request.param == "eva02" else CLIP_CFG)
    torch.manual_seed(0)
    return build_vision_tower(cfg)


def test_geometry_and_defaults(tower):
    assert isinstance(tower, VisionTower)
    assert (tower.hidden_size, tower.image_size, tower.patch_size) == (64, 56, 14)
    assert tower.grid_size == (4, 4) and tower.num_patches == 16 and tower.num_image_tokens == 16
    assert tower.select_layer == -2 and tower.select_feature == "patch"
    assert not any(p.requires_grad for p in tower.parameters()) and not tower.training
    proc = tower.image_processor
    assert proc.image_size == 56 and proc.image_aspect_ratio == "crop"


def test_select_layer_and_feature_semantics(tower, pixels):
    with torch.no_grad():
        feats, states = tower(pixels, output_hidden_states=True)
        assert len(states) == tower.depth + 1 == 4
        assert torch.equal(feats, states[-2][:, 1:])  # LLaVA: hidden_states[-2], CLS dropped
        for layer in range(-4, 4):
            tower.select_layer = layer
            assert torch.allclose(tower(pixels), states[layer][:, 1:], atol=1e-6)
        tower.select_feature = "cls_patch"
        tower.select_layer = -1
        assert tower.num_image_tokens == 17
        out = tower(pixels)
        assert out.shape == (2, 17, 64) and torch.allclose(out, states[-1], atol=1e-6)


def test_only_needed_blocks_run(tower, pixels):
    calls = []
    for i, block in enumerate(tower.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    with torch.no_grad():
        tower(pixels)
        assert calls == [0, 1]  # -2 of 3 blocks: the last block is skipped
        calls.clear()
        tower.select_layer = 0
        tower(pixels)
        assert calls == []
        tower(pixels, output_hidden_states=True)
        assert calls == [0, 1, 2]


@pytest.mark.parametrize("bad", [4, -5, 1.0, True, "-2"])
def test_invalid_select_layer(tower, bad):
    with pytest.raises(ValueError, match="select_layer"):
        tower.select_layer = bad


def test_invalid_select_feature_and_pixels(tower):
    with pytest.raises(ValueError, match="select_feature"):
        tower.select_feature = "cls"
    with pytest.raises(ValueError, match=r"\[B, 3, 56, 56\]"):
        tower(torch.zeros(1, 3, 64, 64))
    with pytest.raises(TypeError, match="float"):
        tower(torch.zeros(1, 3, 56, 56, dtype=torch.uint8))


def test_freeze_stays_eval_under_train(tower):
    tower.train()
    assert not tower.training
    tower.unfreeze()
    tower.train()
    assert tower.training
    tower.freeze()
    assert not tower.training and not any(p.requires_grad for p in tower.parameters())


def test_unfreeze_only_what_feeds_the_selected_layer(tower):
    tower.unfreeze(last_k_blocks=1)
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    block1 = {n for n, _ in tower.blocks[1].named_parameters(prefix="b")}
    assert len(trainable) == len(block1) > 0
    assert all(p.requires_grad for p in tower.blocks[1].parameters())
    assert not any(p.requires_grad for p in tower.blocks[2].parameters())  # never runs at select_layer -2
    tower.freeze().unfreeze()
    assert all(p.requires_grad for p in tower.blocks[0].parameters())
    assert all(p.requires_grad for p in tower.embedding_parameters())
    assert not any(p.requires_grad for p in tower.blocks[2].parameters())
    with pytest.raises(ValueError, match="last_k_blocks"):
        tower.unfreeze(last_k_blocks=3)


def test_gradient_checkpointing_gives_equal_gradients(tower, pixels):
    tower.unfreeze()
    tower.train()

    def grads():
        tower.zero_grad(set_to_none=True)
        x = pixels.clone().requires_grad_(True)
        (tower(x) ** 2).mean().backward()
        return {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}, x.grad

    plain, plain_x = grads()
    tower.gradient_checkpointing_enable()
    assert tower.is_gradient_checkpointing
    ckpt, ckpt_x = grads()
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], rtol=1e-5, atol=1e-7), name
    assert torch.allclose(plain_x, ckpt_x, rtol=1e-5, atol=1e-8)


def test_clip_hidden_states_follow_hf(pixels):
    """hidden_states[0] is the post-pre_layrnorm embedding, exactly as HF CLIPVisionModel (and LLaVA) see it."""
    tower = build_vision_tower(from_eva_clip_vision_cfg(CLIP_CFG, quick_gelu=True))
    assert tower.config.hidden_act == "quick_gelu"
    hf = CLIPVisionModel(tower.model.config).eval()
    hf.load_state_dict(tower.model.state_dict())
    with torch.no_grad():
        _, ours = tower(pixels, output_hidden_states=True)
        theirs = hf(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-5)
