"""The GPU check end to end on the CPU: `--prepare` leaves what the device needs, `--tiny` runs every phase,
and a run killed mid-way leaves its finished phases on disk."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
sys.path.insert(0, str(REPO / "scripts"))

from gpu_check_lib.phases import PHASES  # noqa: E402


def _env(tmp_path, **extra):
    env = {**os.environ, "VENV": sys.prefix, "GPU_CHECK_OUT": str(tmp_path / "out"), **extra}
    env.pop("OUT", None)
    return env


@pytest.mark.slow
def test_tiny_run_exercises_every_phase(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--tiny"], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu_check_tiny.json").read_text())
    phases = result["phases"]
    assert list(phases) == [p.name for p in PHASES] and result["finished"] is True
    assert all(p["status"] == "ok" for p in phases.values()), {k: v.get("error") for k, v in phases.items()}
    assert all(check["ok"] for check in phases["preflight"]["checks"].values())
    assert phases["preflight"]["versions"]["bitsandbytes"]
    for kind in ("unpadded", "right_padded"):
        stage2 = phases["stage2_qlora"][kind]
        assert stage2["tokens_per_s"] > 0 and stage2["flops"]["model"] > 0 and stage2["flops"]["parts"]["lora"] > 0
    padded = phases["stage2_qlora"]["right_padded"]
    assert padded["padded_tokens_per_step"] > padded["tokens_per_step"]
    assert phases["stage2_qlora"]["placement"]["llm_linear"] == ["nf4"]
    assert phases["stage1_projector"]["placement"]["lora"] == []
    assert phases["tower_forward"]["images_per_s"] > 0
    assert phases["generation_4bit"]["placement"]["lora"] == ["float32"]  # the compute dtype on the CPU
    assert phases["generation_merged"]["placement"]["lora"] == []
    for name in ("generation_4bit", "generation_merged"):  # CPU fp32: batched generation is exact
        agreement = phases[name]["generation"]["batch_4"]["agreement_with_batch_1"]
        assert agreement["rows_identical"] == agreement["rows"] == 4
    tokens = phases["projector_tokens"]  # the tiny tower's 2x2 grid: 4 tokens, pixel-shuffled to 1
    assert tokens["mlp2x_gelu"]["image_tokens"] == 4 and tokens["pixel_shuffle2_mlp2x_gelu"]["image_tokens"] == 1
    assert tokens["ratios_pixel_shuffle_vs_mlp"]["kv_image_reduction"] == 4.0
    assert all(tokens[p]["samples_per_s"] > 0 and tokens[p]["kv_cache_bytes"] > 0 for p in ("mlp2x_gelu",
                                                                                             "pixel_shuffle2_mlp2x_gelu"))
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "[gpu_check] generation_merged: ok" in log
    table = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--table",
                            str(tmp_path / "out" / "gpu_check_tiny.json")], capture_output=True, text=True, check=True)
    assert "stage-2 QLoRA, right-padded" in table.stdout and "4/4 rows identical to batch 1" in table.stdout
    assert "pixel shuffle vs mlp2x_gelu" in table.stdout and "QLoRA, 1 image + 8 text tokens" in table.stdout


@pytest.mark.slow
def test_killed_run_keeps_the_finished_phases(tmp_path):
    out = tmp_path / "out" / "gpu_check_tiny.json"
    proc = subprocess.Popen(["bash", str(SCRIPT), "--tiny"], env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and json.loads(out.read_text())["phases"].get("setup_llm", {}).get("status") == "ok":
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    result = json.loads(out.read_text())
    assert result["finished"] is False
    assert result["phases"]["preflight"]["status"] == "ok" and result["phases"]["preflight"]["checks"]["tower"]["ok"]
    assert result["phases"]["setup_llm"]["status"] == "ok" and result["phases"]["setup_llm"]["llm"]["params"] > 0
    assert result["phases"].get("stage2_qlora", {}).get("status") in (None, "running")
    assert "[gpu_check] preflight: ok" in (tmp_path / "out" / "gpu_check.log").read_text()


@pytest.mark.slow
def test_prepare_leaves_the_wheel_and_tokenizer_or_fails_loudly(tmp_path):
    whl = tmp_path / "whl"
    done = subprocess.run(["bash", str(SCRIPT), "--prepare"], env=_env(tmp_path, WHL_DIR=str(whl)),
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    from importlib.metadata import version

    wheels = sorted(p.name for p in whl.glob("*.whl"))
    assert wheels and all(name.startswith(f"bitsandbytes-{version('bitsandbytes')}-") for name in wheels)
    assert len(wheels) == 1 and (whl / "tokenizer.model").stat().st_size > 100_000
    assert 'carry=["' in done.stdout

    (whl / "tokenizer.model").unlink()
    broken = subprocess.run(["bash", str(SCRIPT), "--prepare"], capture_output=True, text=True, timeout=600,
                            env=_env(tmp_path, WHL_DIR=str(whl), LLM2CLIP_LLAVA_SPM_MODEL=str(tmp_path / "none")))
    assert broken.returncode != 0 and "tokenizer" in broken.stderr
    no_venv = subprocess.run(["bash", str(SCRIPT), "--prepare"], capture_output=True, text=True,
                             env=_env(tmp_path, WHL_DIR=str(whl), VENV=str(tmp_path / "no-venv")))
    assert no_venv.returncode != 0 and "no project Python" in no_venv.stderr
