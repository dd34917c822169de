"""The tower registry: every architecture is one class that owns its presets, checkpoint layouts and token layout."""
import pytest
import torch

from vision_tower import PRESETS, VisionTower, VisionTowerConfig, build_vision_tower
from vision_tower.checkpoint import registered_layouts
from vision_tower.registry import TOWERS, UnknownTowerError, tower_class


def test_unknown_arch_is_refused_everywhere():
    with pytest.raises(UnknownTowerError, match="unknown tower arch 'vit'.*eva02"):
        tower_class("vit")
    with pytest.raises(ValueError, match="arch must be one of"):
        VisionTowerConfig(arch="vit")
    eva = VisionTowerConfig(arch="eva02", image_size=28, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    with pytest.raises(ValueError, match="needs arch 'clip'"):
        tower_class("clip")(eva)


@pytest.mark.parametrize("arch", list(TOWERS))
def test_each_registered_tower_declares_what_it_owns(arch):
    cls = tower_class(arch)
    assert issubclass(cls, VisionTower) and cls.arch == arch
    assert cls.num_prefix_tokens in (0, 1)
    assert cls.layouts, f"{arch} reads no checkpoint layout"
    for preset in cls.presets:
        assert preset.arch == arch and PRESETS[preset.name] is preset


def test_layout_names_are_unique_and_in_registry_order():
    arches = [arch for arch, _ in registered_layouts()]
    names = [layout.name for _, layout in registered_layouts()]
    assert len(set(names)) == len(names)
    assert arches == sorted(arches, key=list(TOWERS).index)  # earlier towers' layouts win a tie


@pytest.mark.parametrize("arch", list(TOWERS))
def test_tiny_tower_output_follows_its_prefix_tokens(arch):
    """`patch` features are the hidden state minus the tower's own prefix tokens, whatever that count is."""
    cls = tower_class(arch)
    preset = cls.presets[0]
    cfg = preset.replace(name=None, image_size=28, patch_size=14, hidden_size=32, num_layers=2, num_heads=2,
                         intermediate_size=64, rope_pt_grid=2, hub_id=None, hub_filename=None)
    torch.manual_seed(0)
    tower = build_vision_tower(cfg)
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        feats, states = tower(pixels, output_hidden_states=True)
    assert states[0].shape[1] == cls.num_prefix_tokens + 4
    assert tower.num_image_tokens == feats.shape[1] == 4 and tower.feature_prefix_tokens == 0
    assert torch.equal(feats, states[-2][:, cls.num_prefix_tokens:])


def test_a_tower_class_must_supply_every_hook():
    import pytest

    from vision_tower.base import VisionTower

    class Incomplete(VisionTower):
        arch = "incomplete"

    with pytest.raises(TypeError, match="blocks.*canonical_key_map.*embed.*embedding_parameters.*infer_structure"
                                        ".*init_non_persistent_buffers"):
        Incomplete.__new__(Incomplete)
