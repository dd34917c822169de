"""`pixel_shuffle{k}_mlp{depth}x_gelu`: the regrouping equals the reference implementations, the token count and
the grid checks come from the class alone, and the artifact round-trips."""
import pytest
import torch
import torch.nn.functional as F

from projector import (
    ProjectorMismatchError, build_projector, check_projector, image_token_count, load_projector, projector_class,
    save_projector,
)
from projector.pixel_shuffle import PixelShuffleMLPProjector, pixel_shuffle


def test_equals_transformers_idefics3_pixel_shuffle():
    """Idefics3 (and nanoVLM, whose reshape/permute gives the same order) on a square grid."""
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

    x = torch.randn(3, 24 * 24, 16)
    for k in (2, 3, 4):
        reference = Idefics3Connector.pixel_shuffle(None, x, scale_factor=k)  # uses nothing of self
        torch.testing.assert_close(pixel_shuffle(x, (24, 24), k), reference, rtol=0, atol=0)


@pytest.mark.parametrize("grid,k", [((4, 6), 2), ((6, 9), 3), ((24, 24), 2)])
def test_block_order_on_non_square_grids(grid, k):
    """Token (i, j) holds patches (k·i + dy, k·j + dx) at channels (dy·k + dx)·C + c: torch's pixel_unshuffle
    holds the same values channel-major (c·k² + dy·k + dx)."""
    (h, w), c = grid, 5
    x = torch.randn(2, h * w, c)
    ours = pixel_shuffle(x, grid, k)
    assert ours.shape == (2, (h // k) * (w // k), c * k * k)
    maps = x.transpose(1, 2).reshape(2, c, h, w)
    unshuffled = F.pixel_unshuffle(maps, k)  # [B, C·k², h/k, w/k], channel c·k² + dy·k + dx
    expected = unshuffled.reshape(2, c, k * k, h // k, w // k).permute(0, 3, 4, 2, 1).reshape(2, -1, k * k * c)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    i, j, dy, dx = h // k - 1, 0, k - 1, 1 % k  # one value traced by hand
    assert torch.equal(ours[:, i * (w // k) + j, (dy * k + dx) * c:(dy * k + dx + 1) * c],
                       x[:, (k * i + dy) * w + (k * j + dx)])


def test_names_parse_and_k_defaults_to_two():
    assert projector_class("pixel_shuffle2_mlp2x_gelu") == (PixelShuffleMLPProjector, {"k": 2, "depth": 2})
    assert projector_class("pixel_shuffle3_mlp1x_gelu")[1] == {"k": 3, "depth": 1}
    assert projector_class("pixel_shuffle_mlp2x_gelu") == (PixelShuffleMLPProjector, {"depth": 2})
    assert build_projector("pixel_shuffle_mlp2x_gelu", 8, 16).k == 2


@pytest.mark.parametrize("name,grid,tokens", [
    ("pixel_shuffle2_mlp2x_gelu", (24, 24), 144),  # EVA02-L-14-336: 576 -> 144
    ("pixel_shuffle_mlp2x_gelu", (24, 24), 144),
    ("pixel_shuffle3_mlp2x_gelu", (24, 24), 64),
    ("pixel_shuffle2_mlp2x_gelu", (16, 16), 64),  # SigLIP2 So400m at 224 px: 256 -> 64
    ("pixel_shuffle2_mlp2x_gelu", (4, 6), 6),
])
def test_token_count_and_forward_shape(name, grid, tokens):
    assert image_token_count(name, grid) == tokens
    check_projector(name, grid)
    proj = build_projector(name, 8, 12)
    assert proj.num_output_tokens(grid) == tokens
    out = proj(torch.randn(2, grid[0] * grid[1], 8), grid=grid)
    assert out.shape == (2, tokens, 12)


def test_mlp_takes_the_merged_width_with_llava_parameter_names():
    proj = build_projector("pixel_shuffle2_mlp2x_gelu", 8, 12)
    shapes = {k: tuple(v.shape) for k, v in proj.state_dict().items()}
    assert shapes == {"layers.0.weight": (12, 32), "layers.0.bias": (12,), "layers.2.weight": (12, 12),
                      "layers.2.bias": (12,)}
    x = torch.randn(1, 16, 8)
    expected = proj.layers(pixel_shuffle(x, (4, 4), 2))
    torch.testing.assert_close(proj(x, grid=(4, 4)), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name,grid,prefix,match", [
    ("pixel_shuffle5_mlp2x_gelu", (24, 24), 0, r"pixel_shuffle5: k=5 must divide the tower's 24x24 patch grid"),
    ("pixel_shuffle2_mlp2x_gelu", (5, 5), 0, r"k=2 must divide the tower's 5x5 patch grid"),
    ("pixel_shuffle2_mlp2x_gelu", (24, 24), 1, r"carry 1 prefix \(CLS\) token\(s\): use select_feature 'patch'"),
])
def test_geometries_it_cannot_merge_are_refused_before_any_weights(name, grid, prefix, match):
    with pytest.raises(ValueError, match=match):
        check_projector(name, grid, prefix)


def test_wrong_feature_count_is_named():
    proj = build_projector("pixel_shuffle2_mlp2x_gelu", 8, 12)
    with pytest.raises(ValueError, match="17 feature tokens do not form the tower's 4x4 patch grid"):
        proj(torch.randn(1, 17, 8), grid=(4, 4))


def test_saved_artifact_round_trips_and_refuses_another_k(tmp_path):
    proj = build_projector("pixel_shuffle2_mlp2x_gelu", 8, 12, tower="t")
    save_projector(proj, tmp_path / "p")
    loaded = load_projector(tmp_path / "p", expected_in_features=8, expected_out_features=12, expected_tower="t")
    assert isinstance(loaded, PixelShuffleMLPProjector) and loaded.k == 2
    x = torch.randn(2, 16, 8)
    torch.testing.assert_close(loaded(x, grid=(4, 4)), proj(x, grid=(4, 4)), rtol=0, atol=0)
    cfg = (tmp_path / "p" / "projector_config.json").read_text().replace("pixel_shuffle2", "pixel_shuffle4")
    (tmp_path / "p" / "projector_config.json").write_text(cfg)
    with pytest.raises(ProjectorMismatchError, match="do not match"):
        load_projector(tmp_path / "p")
