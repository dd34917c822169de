"""The GPU check script keeps working: its whole code path at toy size on the CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--tiny", "--steps", "2",
                           "--warmup", "1", "--out", str(out)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    s2 = result["stage2_qlora"]
    assert s2["tokens_per_s"] > 0 and s2["trainable_params"] > 0 and s2["final_loss"] == s2["final_loss"]
    assert result["stage1_projector"]["tokens_per_s"] > 0
    assert result["tower_forward"]["images_per_s"] > 0
