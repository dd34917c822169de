"""`compare`: table content and deltas, mismatched benchmark sets, nested metrics, the PNG, bad inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mllm.eval.compare import compare_runs, load_run, main, to_markdown
from mllm.eval.report import METRICS_FORMAT

DISPLAY = {"pope": "POPE", "mme": "MME", "textvqa": "TextVQA", "vqav2": "VQAv2"}
MAIN = {"pope": "f1", "mme": "perception", "textvqa": "accuracy", "vqav2": "accuracy"}


def _write(root, label, bench, metrics, n=100, options=None, tower="eva"):
    d = root / bench / ("" if options is None else "-".join(f"{k}={v}" for k, v in options.items()))
    d.mkdir(parents=True, exist_ok=True)
    main_metric = MAIN[bench]
    data = {"format": METRICS_FORMAT, "benchmark": bench, "display_name": DISPLAY[bench], "main_metric": main_metric,
            "main": metrics.get(main_metric), "n": n, "metrics": {"benchmark": bench, **metrics, "notes": []},
            "benchmark_options": options or {}, "run": {"label": label, "model": f"/ckpt/{label}", "tower": tower,
                                                        "llm": "vicuna"}}
    (d / "metrics.json").write_text(json.dumps(data))
    return d / "metrics.json"


@pytest.fixture
def two_runs(tmp_path):
    a, b = tmp_path / "clip", tmp_path / "llm2clip"
    _write(a, "CLIP", "pope", {"f1": 80.0, "splits": {"random": {"f1": 81.0}}})
    _write(a, "CLIP", "mme", {"perception": 1400.0, "cognition": 300.0})
    _write(a, "CLIP", "textvqa", {"accuracy": 50.0}, options={"use_ocr": False})
    _write(a, "CLIP", "textvqa", {"accuracy": 58.0})
    _write(b, "LLM2CLIP", "pope", {"f1": 85.5, "splits": {"random": {"f1": 84.0}}}, tower="llm2clip-eva")
    _write(b, "LLM2CLIP", "mme", {"perception": 1450.25, "cognition": 290.5}, n=90, tower="llm2clip-eva")
    _write(b, "LLM2CLIP", "textvqa", {"accuracy": 60.0}, tower="llm2clip-eva")
    _write(b, "LLM2CLIP", "vqav2", {"accuracy": None}, tower="llm2clip-eva")
    return a, b


def test_table_rows_deltas_and_mismatched_sets(two_runs):
    comp = compare_runs([load_run(str(p)) for p in two_runs], ["mme:cognition", "pope:splits.random.f1"])
    md = to_markdown(comp, "Towers")
    assert "| Benchmark | Metric | CLIP | LLM2CLIP | Δ LLM2CLIP |" in md
    assert "| POPE | f1 | 80.00 | 85.50 | +5.50 |" in md
    assert "| POPE | splits.random.f1 | 81.00 | 84.00 | +3.00 |" in md
    assert "| MME | perception | 1400.00 | 1450.25 | +50.25 |" in md
    assert "| MME | cognition | 300.00 | 290.50 | -9.50 |" in md
    assert "| TextVQA | accuracy | 58.00 | 60.00 | +2.00 |" in md
    assert "| TextVQA (use_ocr=False) | accuracy | 50.00 | — | — |" in md  # a different protocol: its own row
    assert "| VQAv2 | accuracy | — | — | — |" in md
    notes = "\n".join(comp.notes)
    assert "TextVQA (use_ocr=False): no result for LLM2CLIP" in notes and "VQAv2: no result for CLIP" in notes
    assert "MME: runs scored different numbers of items (CLIP: 100, LLM2CLIP: 90)" in notes
    assert "VQAv2 [LLM2CLIP]: no local score" in notes
    assert "tower llm2clip-eva" in md and "`/ckpt/CLIP`" in md


def test_cli_writes_markdown_png_and_json(two_runs, tmp_path, capsys):
    out = tmp_path / "report"
    a, b = two_runs
    assert main([f"OpenAI CLIP={a}", f"LLM2CLIP={b}", "--output-dir", str(out), "--metric", "mme:cognition"]) == 0
    printed = capsys.readouterr().out
    assert "| POPE | f1 | 80.00 | 85.50 | +5.50 |" in printed and "Δ OpenAI CLIP" not in printed
    assert (out / "comparison.md").read_text().startswith("# CLIP vs LLM2CLIP vision tower")
    data = json.loads((out / "comparison.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["OpenAI CLIP", "LLM2CLIP"] and len(data["rows"]) == 6
    png = out / "comparison.png"
    assert png.stat().st_size > 10_000
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # bars, text and axes, not a blank canvas


def test_bad_inputs_are_named(two_runs, tmp_path, capsys):
    a, b = two_runs
    assert main([str(a)]) == 2 and "at least two runs" in capsys.readouterr().err
    assert main([str(a), str(a)]) == 2 and "run labels must differ" in capsys.readouterr().err
    (tmp_path / "other.json").write_text('{"accuracy": 1}')
    assert main([str(a), str(tmp_path / "other.json")]) == 2
    assert "not a metrics.json written by `llm2clip-llava eval`" in capsys.readouterr().err
    assert main([str(a), str(tmp_path / "nowhere")]) == 2 and "no such file or folder" in capsys.readouterr().err
    _write(tmp_path / "dup" / "x", "D", "pope", {"f1": 1.0})
    _write(tmp_path / "dup" / "y", "D", "pope", {"f1": 2.0})
    with pytest.raises(ValueError, match="holds two results for pope"):
        load_run(str(tmp_path / "dup"))
    with pytest.raises(ValueError, match="expected BENCHMARK:METRIC"):
        compare_runs([load_run(str(a)), load_run(str(b))], ["cognition"])


def test_compare_real_eval_outputs(synthetic_bench, tiny_checkpoint, loaded_checkpoint, tmp_path, capsys):
    from mllm.eval.runner import EvalConfig, run_eval

    model, processor = loaded_checkpoint
    for label in ("CLIP", "LLM2CLIP"):
        for name in ("pope", "mme"):
            bench = synthetic_bench[name]
            run_eval(EvalConfig(benchmark=name, data=str(bench.data), model=str(tiny_checkpoint), label=label,
                                output_dir=str(tmp_path / label / name), limit=6 if label == "CLIP" else None,
                                max_new_tokens=2, num_workers=0, progress=False), model, processor)
    capsys.readouterr()
    assert main([str(tmp_path / "CLIP"), str(tmp_path / "LLM2CLIP"), "--output-dir", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| POPE | f1 |" in md and "| MME | perception |" in md and "tower tiny-eva02" in md
    assert "POPE: runs scored different numbers of items (CLIP: 6, LLM2CLIP: 12)" in md
