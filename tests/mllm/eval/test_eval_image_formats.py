"""Eval decodes only allow-listed formats: the runner's image workers and the lmms-eval adapter refuse an EPS
(named as such, never handed to Ghostscript) and still read PNG."""
import pytest
from PIL import EpsImagePlugin, Image

from mllm.eval.lmms_adapter import LLM2CLIPLlava
from mllm.eval.runner import ImageItemDataset
from mllm.eval.types import EvalItem

EPS_58 = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


@pytest.fixture
def no_ghostscript(monkeypatch):
    def ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript ran")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)


def _item(qid, path):
    return EvalItem(question_id=qid, prompt="<image>\nq", images=(str(path),), max_new_tokens=3)


def test_eval_workers_skip_an_eps_with_its_reason(tmp_path, no_ghostscript):
    (tmp_path / "a.jpg").write_bytes(EPS_58)
    Image.new("RGB", (5, 5), "red").save(tmp_path / "b.png")
    dataset = ImageItemDataset([_item("a", tmp_path / "a.jpg"), _item("b", tmp_path / "b.png")])
    index, images, error = dataset[0]
    assert images is None and error.reason == "unsupported_format" and "EPS" in error.detail
    index, images, error = dataset[1]
    assert error is None and images[0].size == (5, 5)


def test_lmms_adapter_refuses_an_eps_visual(tmp_path, no_ghostscript):
    path = tmp_path / "doc.png"
    path.write_bytes(EPS_58)
    for visual in (str(path), EPS_58, Image.open(path)):
        with pytest.raises(ValueError, match="unsupported_format.*EPS"):
            LLM2CLIPLlava._load_visuals([visual], "task doc 0")
    Image.new("RGB", (4, 6), "blue").save(path)
    assert LLM2CLIPLlava._load_visuals([str(path)], "task doc 0")[0].size == (4, 6)
