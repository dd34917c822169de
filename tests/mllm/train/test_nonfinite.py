"""A finite loss with an infinite gradient: the update is skipped and counted (naming step and samples), never
written as NaN weights; past --max_nonfinite_grad_steps the run stops with one line naming them."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import torch
from safetensors.torch import load_file

# Trains with a gradient hook that makes the first trainable weight's gradient infinite on one backward call.
INF_GRAD = """
import sys, torch
import mllm.train.trainer as trainer
target, calls, build = int(sys.argv[1]), [], trainer.build_model
def build_with_inf_grad(*args, **kwargs):
    model, processor = build(*args, **kwargs)
    weight = next(p for p in model.parameters() if p.requires_grad)
    def hook(grad):
        calls.append(1)
        return torch.full_like(grad, float("inf")) if len(calls) == target else grad
    weight.register_hook(hook)
    return model, processor
trainer.build_model = build_with_inf_grad
from mllm.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _run(args, inf_at_backward: int):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", INF_GRAD, str(inf_at_backward), *map(str, args)],
                          capture_output=True, text=True, env=env, check=False)


def _projector(checkpoint):
    return load_file(str(checkpoint / "projector" / "projector.safetensors"))


def test_infinite_gradient_skips_the_update_and_counts_it(train_env, cli, tmp_path):
    out = tmp_path / "run"
    # 2 micro-batches per step: backward call 3 is optimizer step 2's first micro-batch
    done = _run(["pretrain", *cli.args(train_env, out, max_steps=4, save_steps=1, save_total_limit=0)], 3)
    assert done.returncode == 0, done.stderr[-3000:]
    warning = re.search(r"non-finite gradient norm \(inf\) at optimizer step 2 on samples (\[.*?\]): update skipped",
                        done.stderr)
    assert warning and len(eval(warning.group(1))) == 4, done.stderr[-3000:]  # both micro-batches' sample ids
    for step in range(1, 5):
        assert all(torch.isfinite(t).all() for t in _projector(out / f"checkpoint-{step}").values())
    one, two, three = (_projector(out / f"checkpoint-{s}") for s in (1, 2, 3))
    assert all(torch.equal(one[k], two[k]) for k in one)  # step 2 changed nothing
    assert not all(torch.equal(two[k], three[k]) for k in two)  # training went on
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["nonfinite_grad_steps_skipped"] == 1 and summary["steps"] == 4


def test_past_the_limit_the_run_stops_naming_step_and_samples(train_env, cli, tmp_path):
    out = tmp_path / "run"
    done = _run(["pretrain", *cli.args(train_env, out, max_steps=4, save_steps=1, max_nonfinite_grad_steps=0)], 3)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert re.match(r"llm2clip-llava pretrain: error: non-finite gradient norm \(inf\) at optimizer step 2 on "
                    r"samples \['s\d+', 's\d+', '\w+', '\w+'\]", last), last
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert all(torch.isfinite(t).all() for t in _projector(out / "checkpoint-1").values())
