"""The paper recipe end to end at toy size: two tiny towers (EVA02 and CLIP architectures) through stage 1, stage 2
(QLoRA), five benchmarks in their distributed layouts and `compare`; killed with SIGKILL mid stage 2 of the second
tower, resumed without redoing a finished step, then run again doing nothing."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mllm.recipe.cli import main as reproduce
from mllm.recipe.config import load_recipe
from mllm.recipe.plan import build_plan
from mllm.recipe.runner import marker_path

TINY_RECIPE = Path(__file__).with_name("tiny_recipe.yaml")
BENCHMARKS = ("pope", "mme", "gqa", "textvqa", "sqa")

# Runs the recipe in a fresh interpreter and SIGKILLs it the moment stage 2 of the second tower has written its
# checkpoint-2 (of 4): a real kill mid-step, at a deterministic point.
KILL_SCRIPT = """
import os, signal, sys
from mllm.train import checkpointing
save = checkpointing.CheckpointWriter.save
def save_then_die(self, step, **kw):
    out = save(self, step, **kw)
    if self.run_dir.as_posix().endswith("llm2clip/stage2") and step == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
checkpointing.CheckpointWriter.save = save_then_die
from mllm.recipe.cli import main
sys.exit(main(["--config", "recipe.yaml"]))
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, spm_tokenizer_dir):
    from mllm.recipe.synthetic import write_llava_root
    from mllm.tiny import save_tiny_llm, save_tiny_tower

    root = tmp_path_factory.mktemp("recipe")
    shutil.copytree(spm_tokenizer_dir, root / "models" / "tokenizer")
    save_tiny_llm(root / "models" / "llm", "llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4)
    save_tiny_tower(root / "models" / "eva", arch="eva02")
    save_tiny_tower(root / "models" / "clip", arch="clip", seed=1)
    write_llava_root(root / "data", image_size=28)
    shutil.copyfile(TINY_RECIPE, root / "recipe.yaml")
    return root


def _snapshot(paths: list[Path]) -> dict[str, tuple[int, bytes]]:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}


@pytest.mark.slow
def test_recipe_killed_resumed_then_idle(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    steps = build_plan(load_recipe("recipe.yaml"))
    ids = [s.id for s in steps]
    assert ids[:7] == ["clip/stage1", "clip/stage2", *(f"clip/eval/{b}" for b in BENCHMARKS)]
    assert ids[-1] == "compare" and len(ids) == 15
    runs = workspace / "runs"

    # 1. killed: SIGKILL inside llm2clip/stage2, after its checkpoint-2
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT], cwd=workspace, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:] + proc.stderr[-3000:]
    finished = ids[:8]  # the whole CLIP tower and the LLM2CLIP tower's stage 1
    assert all(marker_path(runs, s).is_file() for s in steps[:8])
    assert not any(marker_path(runs, s).is_file() for s in steps[8:])
    assert (runs / "llm2clip" / "stage2" / "checkpoint-2").is_dir()
    assert not (runs / "llm2clip" / "stage2" / "training_summary.json").exists()
    kept = [marker_path(runs, s) for s in steps[:8]] + [
        runs / "clip" / "stage1" / "training_summary.json", runs / "clip" / "stage2" / "training_summary.json",
        runs / "llm2clip" / "stage1" / "training_summary.json",
        *(runs / "clip" / "eval" / b / "metrics.json" for b in BENCHMARKS)]
    before = _snapshot(kept)

    # 2. the same command again: finished steps skipped, stage 2 resumes from checkpoint-2, the rest runs
    capsys.readouterr()
    assert reproduce(["--config", "recipe.yaml"]) == 0
    out = capsys.readouterr().out
    for n, step_id in enumerate(finished, 1):
        assert f"[{n}/15] {step_id}: done earlier" in out
    assert re.search(r"resuming llm2clip/stage2 from \S*checkpoint-2", out)
    assert "7 step(s) run, 8 finished earlier and skipped" in out
    assert _snapshot(kept) == before, "a finished step was redone"
    train_log = (runs / "llm2clip" / "stage2" / "train.log").read_text()
    assert re.search(r"resumed from \S*checkpoint-2 at step 2", train_log)
    for tower in ("clip", "llm2clip"):  # each step's log holds its own lines only (steps share one process)
        assert "[finetune]" not in (runs / tower / "stage1" / "train.log").read_text()
    summary = json.loads((runs / "llm2clip" / "stage2" / "training_summary.json").read_text())
    assert summary["steps"] == 4 and summary["mode"] == "qlora"

    # the comparison: both runs, every benchmark, deltas = the difference of the two metrics files
    comp = json.loads((runs / "comparison" / "comparison.json").read_text())
    assert [r["label"] for r in comp["runs"]] == ["CLIP (tiny)", "LLM2CLIP (tiny)"]
    headline = {r["key"]: r for r in comp["rows"] if r["metric"] != "cognition"}
    assert set(headline) == set(BENCHMARKS)
    table = (runs / "comparison" / "comparison.md").read_text()
    for bench in BENCHMARKS:
        a, b = (json.loads((runs / t / "eval" / bench / "metrics.json").read_text())["main"]
                for t in ("clip", "llm2clip"))
        assert headline[bench]["values"] == [a, b]
        title = headline[bench]["title"]
        row = f"| {title} | {headline[bench]['metric']} | {a:.2f} | {b:.2f} | {b - a:+.2f} |"
        assert row in table.splitlines(), row
    png = runs / "comparison" / "comparison.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    report = (runs / "REPORT.md").read_text()
    assert "| Δ LLM2CLIP (tiny) |" in report and "comparison/comparison.png" in report
    for tower in ("clip", "llm2clip"):
        for bench in BENCHMARKS:
            link = f"{tower}/eval/{bench}/metrics.json"
            assert f"]({link})" in report and (runs / link).is_file()

    # 3. once more: nothing to do, nothing touched
    everything = sorted(p for p in runs.rglob("*") if p.is_file() and p.name != "REPORT.md")
    before = _snapshot(everything)
    assert reproduce(["--config", "recipe.yaml"]) == 0
    out = capsys.readouterr().out
    assert "0 step(s) run, 15 finished earlier and skipped" in out
    assert "checking the data root" not in out  # nothing left to run: not even the data check
    assert _snapshot(everything) == before
