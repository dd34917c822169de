import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # vt_reference, whatever pytest's import mode

from vt_reference import eva_sizes, vision_cfg  # noqa: E402


@pytest.fixture
def tiny():
    """Tiny EVA02 sizes: 4x4 grid whose RoPE positions are rescaled onto a 6x6 pretraining grid."""
    return eva_sizes(image_size=56, patch_size=14, width=64, layers=3, heads=4, mlp=170, pt_grid=6)


@pytest.fixture
def tiny_cfg_path(tiny, tmp_path):
    path = tmp_path / "vision_cfg.json"
    path.write_text(json.dumps(vision_cfg(tiny)))
    return path


@pytest.fixture
def pixels():
    return torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(123))
