"""The quickstart end to end (CI-sized): the model learns to answer from the image, not from a language prior;
re-runs reuse finished stages; chat and eval find its model with no arguments beyond image and question."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

# the CI profile is the default recipe with fewer held-out questions: the same bars as the report's
CI_ACCURACY_BAR = 0.90
BLANK_MARGIN = 0.15

pytestmark = pytest.mark.slow


def test_learns_from_images_not_from_a_language_prior(quickstart_home):
    report = quickstart_home.report
    acc, chance = report["accuracy"], report["chance"]
    prior = max(chance["uniform"], chance["majority"])
    assert acc["after"] >= CI_ACCURACY_BAR, report
    assert report["passed"], report
    assert acc["blank"] <= prior + BLANK_MARGIN, report  # blanked images: back to chance
    assert acc["before"] <= prior + BLANK_MARGIN, report  # the warm-ups alone cannot see
    assert report["heldout_questions"] >= 100
    summary = json.loads((quickstart_home.root / "report.json").read_text())
    assert summary["accuracy"] == acc and set(summary["stage_seconds"]) >= {"data", "stage0", "stage1", "stage2", "eval"}
    manifest = json.loads((quickstart_home.model_dir / "config.json").read_text())
    assert manifest["quantization"] == "4bit" and "adapter" in manifest["contents"]  # stage 2 really was QLoRA


def test_rerun_reuses_finished_stages(quickstart_home):
    from mllm.quickstart.profiles import PROFILES
    from mllm.quickstart.run import run_quickstart

    start = time.time()
    again = run_quickstart(quickstart_home.root, PROFILES["ci"], seed=0)
    assert set(again["reused_stages"]) == {"data", "base", "stage0", "stage1", "stage2", "eval"}
    assert again["accuracy"] == quickstart_home.report["accuracy"]
    assert time.time() - start < 60


def _cli(args, env):
    done = subprocess.run([sys.executable, "-m", "mllm.cli", *args], capture_output=True, text=True, env=env,
                          check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_chat_and_eval_default_to_the_quickstart_model(quickstart_home, tmp_path):
    records = json.loads((quickstart_home.root / "data" / "heldout.json").read_text())
    record = next(r for r in records if r["category"] == "shape")
    image = quickstart_home.root / "data" / record["image"]
    done = _cli(["chat", "--image", str(image), "-q", record["text"]], quickstart_home.env)
    assert record["answer"].lower() in done.stdout.lower()

    pope = quickstart_home.root / "eval" / "benchmarks" / "pope"
    _cli(["eval", "--benchmark", "pope", "--data", str(pope), "--output-dir", str(tmp_path / "pope")], quickstart_home.env)
    metrics = json.loads((tmp_path / "pope" / "metrics.json").read_text())
    assert metrics["n"] > 0 and metrics["main_metric"] == "f1" and metrics["metrics"]["f1"] >= 90.0
