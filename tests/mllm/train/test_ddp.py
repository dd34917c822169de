"""Two-process CPU DDP (gloo) smoke of both stages: replicas stay identical, each checkpoint is written once."""
from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.slow
def test_two_process_ddp_both_stages(train_env, cli, tmp_path):
    if shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists():
        pytest.fail("torchrun is missing from the environment")
    runs = {}
    for stage, extra in (("pretrain", {}), ("finetune", {"pretrained_projector": tmp_path / "pretrain"})):
        out = tmp_path / stage
        prefix = _torchrun() + ["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                                "-m", "mllm.cli"]
        args = cli.args(train_env, out, max_steps=3, save_steps=2, global_batch_size=4, micro_batch_size=1, **extra)
        done = cli.run([stage, *args], prefix=prefix)
        runs[stage] = (out, done)
        summary = json.loads((out / "training_summary.json").read_text())
        assert summary["world_size"] == 2 and summary["steps"] == 3 and summary["gradient_accumulation_steps"] == 2
        assert "all 2 ranks hold identical trainable weights" in done.stderr
        # checkpoints: written once each (by rank 0), complete, with every rank's RNG state, no leftovers
        names = sorted(p.name for p in out.iterdir() if p.name.startswith(("checkpoint-", ".tmp-")))
        assert names == ["checkpoint-2", "checkpoint-3"], names
        for ckpt in names:
            state = json.loads((out / ckpt / "trainer_state.json").read_text())
            assert state["world_size"] == 2
            assert (out / ckpt / "rng_state_0.pt").exists() and (out / ckpt / "rng_state_1.pt").exists()
        assert done.stderr.count("done: 3 optimizer steps") == 1  # the summary comes from rank 0 only
    assert (runs["finetune"][0] / "adapter" / "adapter_model.safetensors").exists()
    manifest = json.loads((runs["finetune"][0] / "config.json").read_text())
    assert manifest["extra"]["mode"] == "lora" and manifest["contents"]["adapter"] == "adapter"
