import json

import pytest
import torch
from torch import nn

from projector import ProjectorMismatchError, build_projector, load_projector, save_projector


def test_mlp2x_gelu_matches_llava_definition():
    proj = build_projector("mlp2x_gelu", 12, 20)
    layers = list(proj.layers)
    assert [type(m) for m in layers] == [nn.Linear, nn.GELU, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features) == (12, 20)
    assert (layers[2].in_features, layers[2].out_features) == (20, 20)
    x = torch.randn(3, 5, 12)
    expected = layers[2](torch.nn.functional.gelu(layers[0](x)))
    torch.testing.assert_close(proj(x), expected)
    # LLaVA's mm_projector.{0,2} indices survive, so its mm_projector.bin maps by prefix stripping
    assert set(proj.state_dict()) == {"layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"}


@pytest.mark.parametrize("depth", [1, 3, 4])
def test_mlpNx_depth(depth):
    proj = build_projector(f"mlp{depth}x_gelu", 8, 16)
    linears = [m for m in proj.layers if isinstance(m, nn.Linear)]
    gelus = [m for m in proj.layers if isinstance(m, nn.GELU)]
    assert len(linears) == depth and len(gelus) == depth - 1


def test_linear_and_identity():
    assert isinstance(build_projector("linear", 8, 16).layers[0], nn.Linear)
    x = torch.randn(2, 8)
    assert torch.equal(build_projector("identity", 8, 8)(x), x)
    with pytest.raises(ValueError, match="in_features == out_features"):
        build_projector("identity", 8, 16)


@pytest.mark.parametrize("bad", ["mlp", "mlp0x_gelu", "mlp2x_relu", "conv"])
def test_unknown_type_is_named(bad):
    with pytest.raises(ValueError, match=bad):
        build_projector(bad, 8, 8)


def test_save_load_round_trip(tmp_path):
    proj = build_projector("mlp2x_gelu", 12, 20, tower="llm2clip-eva02-l-14-336")
    save_projector(proj, tmp_path)
    cfg = json.loads((tmp_path / "projector_config.json").read_text())
    assert cfg["projector_type"] == "mlp2x_gelu" and cfg["in_features"] == 12 and cfg["tower"] == "llm2clip-eva02-l-14-336"
    loaded = load_projector(tmp_path, expected_in_features=12, expected_out_features=20, expected_tower="llm2clip-eva02-l-14-336")
    x = torch.randn(4, 12)
    torch.testing.assert_close(loaded(x), proj(x), rtol=0, atol=0)


def test_mismatch_errors_say_which(tmp_path):
    save_projector(build_projector("mlp2x_gelu", 12, 20, tower="llm2clip-eva02-l-14-336"), tmp_path)
    with pytest.raises(ProjectorMismatchError, match="input dim 12.*hidden size 1024"):
        load_projector(tmp_path, expected_in_features=1024)
    with pytest.raises(ProjectorMismatchError, match="output dim 20.*LLM hidden size 4096"):
        load_projector(tmp_path, expected_out_features=4096)
    with pytest.raises(ProjectorMismatchError, match="openai-clip"):
        load_projector(tmp_path, expected_tower="openai-clip-vit-l-14-336")


def test_weights_not_matching_config(tmp_path):
    save_projector(build_projector("mlp2x_gelu", 12, 20), tmp_path)
    cfg = json.loads((tmp_path / "projector_config.json").read_text())
    cfg["projector_type"] = "mlp3x_gelu"
    (tmp_path / "projector_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ProjectorMismatchError, match="missing"):
        load_projector(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="projector_config.json"):
        load_projector(tmp_path)


def test_weight_shapes_not_matching_config(tmp_path):
    save_projector(build_projector("mlp2x_gelu", 12, 20), tmp_path)
    cfg = json.loads((tmp_path / "projector_config.json").read_text())
    cfg["in_features"] = 16
    (tmp_path / "projector_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ProjectorMismatchError, match="size mismatch"):
        load_projector(tmp_path)
