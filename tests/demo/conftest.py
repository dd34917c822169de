"""Demo fixtures: a tiny checkpoint, the demo served on loopback by the real command, and `quickstart_model`.

`quickstart_model` is a STAND-IN until the quickstart run is wired in: it trains nothing and returns a tiny
random checkpoint plus what that model actually answers, so the browser test checks the plumbing. The lead
replaces the fixture body (keep its name and return shape) with the quickstart's checkpoint and held-out
records: ``(model_dir, [(image_path, record["text"], record["answer"]), ...])``.
"""
from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
# Generation settings the quickstart server runs with; the stand-in's expected answers use the same.
QUICKSTART_SETTINGS = {"temperature": 0.0, "max_new_tokens": 12}


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory, tiny_llm_dirs, tiny_tower_dir, spm_tokenizer_dir):
    """A tiny random checkpoint (real EVA02 + Llama architectures, 32k SentencePiece vocabulary)."""
    from transformers import AutoTokenizer

    from mllm import TowerSpec, build_model, save_pretrained

    tokenizer = AutoTokenizer.from_pretrained(str(spm_tokenizer_dir))
    spec = TowerSpec(checkpoint=str(tiny_tower_dir), config=None, name="tiny-eva02")
    model, processor = build_model(str(tiny_llm_dirs("llama")), tower=spec, tokenizer=tokenizer)
    return save_pretrained(model, processor, tmp_path_factory.mktemp("demo") / "ckpt")


@pytest.fixture(scope="session")
def demo_bot(demo_checkpoint):
    from mllm.chat import load

    return load(demo_checkpoint)


@pytest.fixture(scope="session")
def quickstart_model(demo_checkpoint, demo_bot, tmp_path_factory):
    """(model_dir, [(image_path, question, expected_answer)]): held-out synthetic colour questions.

    STAND-IN (see the module docstring): the expected answers are what the random model says, computed with
    the API under `QUICKSTART_SETTINGS`, which is what the demo must then show in the browser.
    """
    from mllm.quickstart.synthetic import SHORT_ANSWER_SUFFIX, Scene, SceneObject, ShapesConfig, render_scene

    directory = tmp_path_factory.mktemp("quickstart_standin")
    config = ShapesConfig()
    cases = []
    for colour, shape, cell in (("green", "square", 1), ("yellow", "triangle", 0)):
        path = directory / f"{colour}-{shape}.png"
        render_scene(config, Scene([SceneObject(shape, colour, "large", cell)], 1), random.Random(path.name)).save(path)
        question = f"What color is the {shape}?{SHORT_ANSWER_SUFFIX}"
        cases.append((str(path), question, demo_bot.chat(question, str(path), **QUICKSTART_SETTINGS)))
    return demo_checkpoint, cases


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DemoServer:
    """`llm2clip-llava demo` in a subprocess on a free loopback port; the log is kept for failure reports."""

    def __init__(self, model_dir, *args: str, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_dir / f"demo-{self.port}.log"
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mllm.cli", "demo", "--model", str(model_dir), "--port", str(self.port), *args],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 240) -> "DemoServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the demo exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"the demo did not answer on {self.url} within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-4000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
