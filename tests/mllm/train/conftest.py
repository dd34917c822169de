"""A tiny training setup shared by the training tests: tokenizer, LLM, tower and a small image dataset."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 30), "blue": (30, 40, 210), "yellow": (240, 230, 20)}


@pytest.fixture(scope="session")
def train_env(tmp_path_factory, spm_tokenizer_dir, tiny_llm_dirs, tiny_tower_dir):
    root = tmp_path_factory.mktemp("train_env")
    images = root / "images"
    images.mkdir()
    records = []
    names = list(COLOURS)
    for i in range(20):
        colour = names[i % len(names)]
        Image.new("RGB", (40, 32), COLOURS[colour]).save(images / f"{i}.png")
        records.append({"id": f"s{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the picture?"}, {"from": "gpt", "value": colour}]})
    records.append({"id": "t0", "conversations": [{"from": "human", "value": "Say hi"}, {"from": "gpt", "value": "hi"}]})
    (root / "data.json").write_text(json.dumps(records))
    return {"root": root, "data": root / "data.json", "images": images, "tokenizer": Path(spm_tokenizer_dir),
            "llm": Path(tiny_llm_dirs("llama")), "tower": Path(tiny_tower_dir)}


def base_args(env, stage_dir, **overrides) -> list[str]:
    args = {
        "llm": env["llm"], "tokenizer": env["tokenizer"], "tower": "null", "tower_checkpoint": env["tower"],
        "data_path": env["data"], "image_folder": env["images"], "global_batch_size": 4, "micro_batch_size": 2,
        "max_steps": 6, "save_steps": 2, "logging_steps": 1, "output_dir": stage_dir, "lora_r": 4, "lora_alpha": 8,
        "lora_dropout": 0.1, "num_workers": 0, "pretrained_projector": "null", "gradient_checkpointing": "false",
        "dtype": "fp32",
    }
    args.update(overrides)
    out = []
    for key, value in args.items():
        out += [f"--{key}", str(value)]
    return out


def run_cli(args: list[str], *, check: bool = True, prefix: list[str] | None = None, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = (prefix or [sys.executable, "-m", "mllm.cli"]) + args
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if check and done.returncode:
        raise AssertionError(f"command failed ({done.returncode}): {' '.join(map(str, cmd))}\n{done.stderr[-4000:]}")
    return done


@pytest.fixture(scope="session")
def cli():
    """Helpers to run the console script in a subprocess: cli.args(env, out_dir, **overrides), cli.run(...)."""
    from types import SimpleNamespace

    return SimpleNamespace(args=base_args, run=run_cli)
