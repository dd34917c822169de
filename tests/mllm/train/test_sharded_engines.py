"""FSDP, DeepSpeed ZeRO-2/3 and a 2-"node" DDP launch on 2 CPU processes (gloo), each equal to one process.

Every launch uses a shipped accelerate config with the documented CPU overrides (README: use_cpu, mixed_precision
'no', num_processes 2) and the same data, in which every sample of rank 1's first micro-batch is unreadable: that
rank must still make the collectives of the others (an empty micro-batch). One-process references train the same
global batches (8 = 2 ranks x 2 accumulation steps x 2, or 1 x 4 x 2), so the final weights must agree to float
noise: TOLERANCE (max abs difference; observed 7e-9 for LoRA, 6e-8 for full fine-tuning).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mllm.data.records import estimate_length
from mllm.data.sampler import ModalityLengthGroupedSampler
from mllm.train.config import TrainConfig

pytestmark = pytest.mark.slow

TOLERANCE = 1e-6
CONFIGS = Path(__file__).resolve().parents[3] / "mllm" / "accelerate_configs"
CPU_OVERRIDES = {"use_cpu": True, "mixed_precision": "no", "num_processes": 2}  # the README's CPU recipe
GLOBAL, MICRO, WORLD = 8, 2, 2
COMMON = dict(global_batch_size=GLOBAL, micro_batch_size=MICRO, max_steps=6, save_steps=2, lora_dropout=0.0,
              save_total_limit=3)
WEIGHTS = ("projector/projector.safetensors", "adapter/adapter_model.safetensors", "llm/model.safetensors")
LAUNCH_TIMEOUT = 1200  # 2 shared cores; DeepSpeed compiles its CPU communication op on first use


def _cpu_config(name: str, directory: Path) -> Path:
    config = yaml.safe_load((CONFIGS / name).read_text())
    config.update(CPU_OVERRIDES)
    path = directory / f"cpu_{name}"
    path.write_text(yaml.safe_dump(config))
    return path


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


def _launch_cmd(config: Path, args: list[str], *launch_args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *launch_args,
            "-m", "mllm.cli", *args]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=LAUNCH_TIMEOUT)
    if done.returncode:
        raise AssertionError(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-6000:]}")
    return done


def _weights(run_dir: Path) -> dict:
    return {f"{part}:{k}": v for part in WEIGHTS if (run_dir / part).is_file()
            for k, v in load_file(str(run_dir / part)).items()}


def _max_difference(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa and wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "training_summary.json").read_text())


@pytest.fixture(scope="module")
def dist_data(train_env, tmp_path_factory):
    """32 image records; the two samples of rank 1's first micro-batch point at missing files."""
    root = tmp_path_factory.mktemp("dist_data")
    colours = ["red", "green", "blue", "yellow"]
    records = [{"id": f"d{i}", "image": f"{i % 20}.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the picture?"},
        {"from": "gpt", "value": colours[(i % 20) % 4]}]} for i in range(32)]
    seed = TrainConfig().seed
    sampler = ModalityLengthGroupedSampler([estimate_length(r) for r in records], MICRO, world_size=WORLD, rank=1,
                                           grad_accum_steps=GLOBAL // (MICRO * WORLD), seed=seed)
    bad = sampler.rank_indices()[:MICRO]
    for i in bad:
        records[i]["image"] = f"missing-{i}.png"
    path = root / "data.json"
    path.write_text(json.dumps(records))
    return {"path": path, "bad": sorted(records[i]["id"] for i in bad)}


@pytest.fixture(scope="module")
def runs(train_env, dist_data, cli, tmp_path_factory):
    """Run-argument builder plus the one-process references (lora, full, qlora), trained concurrently."""
    root = tmp_path_factory.mktemp("sharded")

    def args(out: Path, mode: str, **extra) -> list[str]:
        reduction = "per_device" if mode == "full" else "token"  # full: as the finetune_full preset
        return ["finetune", *cli.args(train_env, out, mode=mode, data_path=dist_data["path"],
                                      loss_reduction=reduction, **{**COMMON, **extra})]

    refs = {mode: root / f"ref_{mode}" for mode in ("lora", "full", "qlora")}
    procs = {mode: subprocess.Popen([sys.executable, "-m", "mllm.cli", *args(out, mode)], env=_env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for mode, out in refs.items()}
    for mode, proc in procs.items():
        _, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
        assert proc.returncode == 0, f"reference {mode} failed: {err[-4000:]}"
    return {"root": root, "args": args, "refs": refs, "bad": dist_data["bad"]}


def _check_two_process_run(out: Path, engine: str, runs) -> dict:
    summary = _summary(out)
    assert summary["world_size"] == 2 and summary["engine"] == engine and summary["steps"] == 6
    assert summary["gradient_accumulation_steps"] == 2
    assert sum(summary["skipped"].values()) == len(runs["bad"]) == 2  # rank 1's empty micro-batch, counted once each
    return summary


def _worker_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the training processes a launcher started (its children with RANK in their environment)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = dict(e.split("=", 1) for e in (proc / "environ").read_text().split("\0") if "=" in e)
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher_pid and "RANK" in env:
            found[int(env["RANK"])] = int(proc.name)
    return found


def test_fsdp_lora_equals_one_process_and_resumes_after_a_rank_is_killed(runs, tmp_path):
    config = _cpu_config("fsdp.yaml", tmp_path)
    whole = tmp_path / "fsdp_lora"
    done = _run(_launch_cmd(config, runs["args"](whole, "lora"), "--main_process_port", "0"))
    summary = _check_two_process_run(whole, "fsdp", runs)
    # one FSDP unit per decoder layer (2) and tower block (3), not one for the whole model
    assert summary["fsdp_units"]["LlamaDecoderLayer"] == 2 and summary["fsdp_units"]["EvaBlock"] == 3, summary
    assert "fsdp enabled over gloo" in done.stderr
    assert _max_difference(runs["refs"]["lora"], whole) < TOLERANCE
    from mllm import load_model

    for checkpoint in sorted(whole.glob("checkpoint-*")):  # each one a whole model, in one plain process
        model, _ = load_model(checkpoint, quantization=None)
        assert sum(p.numel() for p in model.projector.parameters()) > 0
    assert _max_difference(whole / "checkpoint-6", whole) == 0.0

    killed = tmp_path / "fsdp_lora_killed"
    launcher = subprocess.Popen(_launch_cmd(config, runs["args"](killed, "lora"), "--main_process_port", "0"),
                                env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + LAUNCH_TIMEOUT
    while not (killed / "checkpoint-2" / "trainer_state.json").exists():
        assert launcher.poll() is None, f"training ended before the kill point: {launcher.stderr.read()[-3000:]}"
        assert time.time() < deadline, "checkpoint-2 never appeared"
        time.sleep(0.02)
    ranks = _worker_pids(launcher.pid)
    assert set(ranks) == {0, 1}, ranks
    os.kill(ranks[1], signal.SIGKILL)
    launcher.communicate(timeout=LAUNCH_TIMEOUT)
    assert launcher.returncode != 0 and not (killed / "training_summary.json").exists()
    done = _run(_launch_cmd(config, runs["args"](killed, "lora", resume_from=killed), "--main_process_port", "0"))
    assert "resumed from" in done.stderr
    assert _summary(killed)["steps"] == 6
    assert _max_difference(whole, killed) == 0.0  # bit-identical to the uninterrupted 2-process run


def test_fsdp_full_equals_one_process(runs, tmp_path):
    out = tmp_path / "fsdp_full"
    _run(_launch_cmd(_cpu_config("fsdp.yaml", tmp_path), runs["args"](out, "full"), "--main_process_port", "0"))
    _check_two_process_run(out, "fsdp", runs)
    assert (out / "llm" / "model.safetensors").is_file()
    assert _max_difference(runs["refs"]["full"], out) < TOLERANCE


def test_fsdp_qlora_equals_one_process(runs, tmp_path):
    """bitsandbytes' CPU backend: 4-bit weights stored as fp32 words (quant_storage = compute dtype), sharded."""
    out = tmp_path / "fsdp_qlora"
    _run(_launch_cmd(_cpu_config("fsdp_qlora.yaml", tmp_path), runs["args"](out, "qlora"), "--main_process_port", "0"))
    summary = _check_two_process_run(out, "fsdp", runs)
    assert summary["fsdp_units"]["LlamaDecoderLayer"] == 2
    assert _max_difference(runs["refs"]["qlora"], out) < TOLERANCE


@pytest.mark.parametrize("config,mode", [("deepspeed_zero2.yaml", "lora"), ("deepspeed_zero3.yaml", "full")])
def test_deepspeed_equals_one_process(runs, tmp_path, config, mode):
    """ZeRO-2 also shows the engine steps once per accumulation window (stepping per micro-batch would not be
    equal); ZeRO-3 partitions the LLM while it loads, and the saved model is gathered from the partitions."""
    out = tmp_path / mode
    _run(_launch_cmd(_cpu_config(config, tmp_path), runs["args"](out, mode), "--main_process_port", "0"))
    _check_two_process_run(out, "deepspeed", runs)
    assert _max_difference(runs["refs"][mode], out) < TOLERANCE


def test_two_node_ddp_launch_equals_one_process(runs, tmp_path):
    """Two `accelerate launch` commands as two machines (one process each) meeting at 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two_nodes"
    nodes = [subprocess.Popen(
        _launch_cmd(CONFIGS / "multi_cpu.yaml", runs["args"](out, "lora"), "--num_machines", "2", "--num_processes", "2",
                    "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)),
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    logs = [node.communicate(timeout=LAUNCH_TIMEOUT)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    _check_two_process_run(out, "ddp", runs)
    assert "all 2 ranks hold identical trainable weights" in logs[0]
    assert _max_difference(runs["refs"]["lora"], out) < TOLERANCE
