"""Demo fixtures: a tiny checkpoint, the demo served on loopback by the real command, and `quickstart_model`.

`quickstart_model` serves the model trained by the CI-sized quickstart (tests/conftest.py `quickstart_home`) as
the demo's default model, with held-out questions and their gold answers.
"""
from __future__ import annotations

import os
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
def quickstart_model(quickstart_home):
    """(None, [(image_path, question, expected_answer)]): held-out colour questions of the quickstart's model.

    None means "no --model": the demo must find the quickstart checkpoint by default (the servers get
    `quickstart_home.env`). The questions are the first held-out colour questions, which the model never saw.
    """
    import json

    records = json.loads((quickstart_home.root / "data" / "heldout.json").read_text())
    picks = [r for r in records if r["category"] == "color"][:2]
    return None, [(str(quickstart_home.root / "data" / r["image"]), r["text"], r["answer"]) for r in picks]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DemoServer:
    """`llm2clip-llava demo` in a subprocess on a free loopback port; the log is kept for failure reports."""

    def __init__(self, model_dir, *args: str, log_dir: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_dir / f"demo-{self.port}.log"
        env = {**(env or os.environ), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
        model_args = [] if model_dir is None else ["--model", str(model_dir)]  # None: the default (quickstart) model
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mllm.cli", "demo", *model_args, "--port", str(self.port), *args],
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
