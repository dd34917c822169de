"""The real ``lmms-eval`` command line with our model on a local task (``--include_path`` + a JSON dataset), the
README's ``--model_args pretrained=...,batch_size=N`` form included. lmms-eval exits 0 even when the evaluation
failed, so the test reads the results and samples files it writes, never its exit code alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mllm.generation import GenerationSettings, generate_text

pytest.importorskip("lmms_eval")
REPO = Path(__file__).resolve().parents[3]
TASK = "llm2clip_local_colours"
COLOURS = ["red", "blue", "green", "black", "white", "yellow"]

TASK_YAML = f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {{docs}}
test_split: test
output_type: generate_until
doc_to_visual: !function colour_task.doc_to_visual
doc_to_text: !function colour_task.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  until: ["\\n\\n"]
process_results: !function colour_task.process_results
metric_list:
  - metric: exact
    aggregation: mean
    higher_is_better: true
"""
TASK_UTILS = '''from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact": float(results[0].strip().lower() == doc["answer"])}
'''


def _write_task(root: Path) -> list[dict]:
    docs = []
    for i, colour in enumerate(COLOURS):
        path = root / f"{i}.png"
        Image.new("RGB", (20 + 9 * i, 40 - 3 * i), colour).save(path)
        docs.append({"id": i, "image": str(path), "question": f"What colour is picture {i}?", "answer": colour})
    (root / "docs.json").write_text(json.dumps(docs))
    (root / "colour_task.yaml").write_text(TASK_YAML.format(docs=root / "docs.json"))
    (root / "colour_task.py").write_text(TASK_UTILS)
    return docs


@pytest.mark.slow
def test_lmms_eval_cli_runs_our_model_on_a_local_task(tiny_checkpoint, loaded_checkpoint, tmp_path):
    task_dir, out = tmp_path / "task", tmp_path / "out"
    task_dir.mkdir()
    docs = _write_task(task_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    # the README's form: batch_size inside --model_args, while lmms-eval passes its own --batch_size too
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "llm2clip_llava",
           "--model_args", f"pretrained={tiny_checkpoint},batch_size=4,device=cpu,max_new_tokens=4",
           "--batch_size", "1", "--tasks", TASK, "--include_path", str(task_dir), "--output_path", str(out),
           "--log_samples"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    log = (done.stdout + done.stderr)[-4000:]
    results = sorted(out.rglob("*results.json"))
    assert results, f"lmms-eval wrote no results (exit {done.returncode}):\n{log}"
    scores = json.loads(results[0].read_text())["results"][TASK]
    samples = [json.loads(line) for f in sorted(out.rglob(f"*samples_{TASK}.jsonl"))
               for line in f.read_text().splitlines()]
    assert len(samples) == len(docs), log

    # every answer is what our own generation gives for the same prompt and image
    model, processor = loaded_checkpoint
    expected = generate_text(model, processor, [[{"from": "human", "value": f"<image>\n{d['question']}"}] for d in docs],
                             [[Image.open(d["image"]).convert("RGB")] for d in docs],
                             GenerationSettings(max_new_tokens=4))
    answers = {s["doc_id"]: s["filtered_resps"] for s in samples}
    assert [answers[i] for i in range(len(docs))] == [e.split("\n\n")[0] for e in expected]
    exact = sum(e.split("\n\n")[0].strip().lower() == d["answer"] for e, d in zip(expected, docs)) / len(docs)
    assert scores["exact,none"] == pytest.approx(exact)
