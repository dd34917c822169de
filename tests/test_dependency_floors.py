"""Dependency floors: no torch whose `torch.load(weights_only=True)` can be made to run code, and the Gradio major
version whose APIs the demo uses; the versions installed here satisfy them."""
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _requirements() -> dict[str, Requirement]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return {r.name: r for r in map(Requirement, deps)}


def test_torch_floor_excludes_the_weights_only_bypasses():
    spec = _requirements()["torch"].specifier
    assert not spec.contains("2.5.1")  # CVE-2025-32434: weights_only=True bypass, fixed in 2.6.0
    assert not spec.contains("2.9.1")  # CVE-2026-24747: weights_only unpickler heap corruption, fixed in 2.10.0
    assert spec.contains("2.10.0") and spec.contains(version("torch").split("+")[0])


def test_gradio_floor_is_the_major_the_demo_is_written_for():
    spec = _requirements()["gradio"].specifier
    assert not spec.contains("5.49.0") and spec.contains(version("gradio"))
    import inspect

    import gradio as gr

    assert {"theme", "css"} <= set(inspect.signature(gr.Blocks.launch).parameters)  # Gradio 6: launch() takes them
