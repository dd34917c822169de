"""The projector registry: type names resolve to classes that own their LLM token count."""
import pytest
import torch

from projector import (
    PROJECTORS, Projector, UnknownProjectorError, build_projector, check_projector, image_token_count,
    load_projector, projector_class, save_projector,
)


def test_registered_types_resolve_with_their_parameters():
    cls, params = projector_class("mlp3x_gelu")
    assert issubclass(cls, Projector) and params == {"depth": 3}
    assert projector_class("linear")[1] == {} and projector_class("identity")[1] == {}


@pytest.mark.parametrize("bad,match", [
    ("conv", "unknown projector type 'conv'.*mlp\\{depth\\}x_gelu \\(e.g. mlp2x_gelu\\)"),
    ("mlp0x_gelu", "'mlp0x_gelu': depth must be >= 1"),
    ("mlp2x_gelu_extra", "unknown projector type"),
])
def test_unknown_types_are_refused_naming_the_registered_ones(bad, match):
    with pytest.raises(UnknownProjectorError, match=match):
        projector_class(bad)
    with pytest.raises(ValueError, match=match):
        check_projector(bad, (24, 24))


@pytest.mark.parametrize("kind", ["linear", "mlp{depth}x_gelu", "identity"])
def test_token_preserving_types_count_one_token_per_feature(kind):
    assert kind in PROJECTORS
    name = kind.replace("{depth}", "2")
    assert image_token_count(name, (24, 24)) == 576
    assert image_token_count(name, (24, 24), prefix_tokens=1) == 577  # select_feature=cls_patch keeps CLS
    proj = build_projector(name, 8, 8)
    assert proj.num_output_tokens((3, 5)) == 15 and proj.output_width == 8
    x = torch.randn(2, 15, 8)
    assert proj(x, grid=(3, 5)).shape == (2, 15, 8)


def test_saved_projector_with_an_unregistered_type_is_refused(tmp_path):
    save_projector(build_projector("linear", 4, 4), tmp_path)
    cfg = (tmp_path / "projector_config.json").read_text().replace('"linear"', '"nonesuch"')
    (tmp_path / "projector_config.json").write_text(cfg)
    with pytest.raises(ValueError, match="unknown projector type 'nonesuch'"):
        load_projector(tmp_path)


def test_a_projector_class_without_forward_cannot_be_built():
    """The base class declares the hooks a projector family must supply: a missing one fails at construction."""
    import pytest

    from projector.builder import Projector, ProjectorConfig

    class Incomplete(Projector):
        pass

    with pytest.raises(TypeError, match="forward"):
        Incomplete(ProjectorConfig("incomplete", 4, 8))
