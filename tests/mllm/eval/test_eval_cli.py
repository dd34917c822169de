"""`llm2clip-llava eval` end to end on the synthetic POPE / MME / VQAv2 exports, and its error exits."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mllm.cli import main


@pytest.mark.parametrize("name", ["pope", "mme", "vqav2"])
def test_synthetic_benchmarks_end_to_end(name, synthetic_bench, tiny_checkpoint, tmp_path, capsys):
    bench = synthetic_bench[name]
    out = tmp_path / name
    argv = ["eval", "--model", str(tiny_checkpoint), "--benchmark", name, "--data", str(bench.data),
            "--output-dir", str(out), "--batch-size", "4", "--num-workers", "1", "--max-new-tokens", "3",
            "--label", "tiny", "--no-progress"]
    argv += [f"--option={k}={v}" for k, v in bench.options.items()]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    expected_main = {"pope": "f1", "mme": "perception", "vqav2": "accuracy"}[name]
    assert metrics["main_metric"] == expected_main and isinstance(metrics["main"], float)
    assert metrics["n"] == bench.n_questions and metrics["skipped"]["count"] == 0
    assert metrics["run"]["label"] == "tiny" and metrics["run"]["tower"] == "tiny-eva02"
    assert metrics["benchmark_options"] == json.loads(json.dumps(
        {**{k: v for k, v in _defaults(name).items()}, **bench.options}))
    assert metrics["timing"]["generated"] == bench.n_questions and metrics["generation"]["max_new_tokens"] == 3
    assert f"{expected_main} = " in printed and "tiny" in printed
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == bench.n_questions and all(isinstance(r["prediction"], str) for r in rows)
    table = (out / "metrics.md").read_text()
    assert f"| **{expected_main}** | **{metrics['main']:.2f}** |" in table
    if name == "vqav2":  # server-side benchmark: the EvalAI upload file is written too
        sub = json.loads(Path(metrics["submission_files"][0]).read_text())
        assert len(sub) == bench.n_questions and set(sub[0]) == {"question_id", "answer"}

    # the same command again: everything comes from the cache
    assert main(argv) == 0
    assert f"0 generated, {bench.n_questions} from cache" in capsys.readouterr().out


def _defaults(name):
    from mllm.eval import get_benchmark

    return {k: v for k, v in get_benchmark(name).options().items() if k != "judge"}


def test_cli_errors_exit_2_with_a_message(synthetic_bench, tiny_checkpoint, tmp_path, capsys):
    pope = str(synthetic_bench["pope"].data)
    base = ["eval", "--model", str(tiny_checkpoint), "--output-dir", str(tmp_path / "o"), "--no-progress"]
    assert main([*base, "--benchmark", "pope", "--data", pope, "--option", "colour=red"]) == 2
    assert "has no option 'colour'" in capsys.readouterr().err
    assert main([*base, "--benchmark", "nope", "--data", pope]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert main([*base, "--benchmark", "pope", "--data", str(tmp_path / "missing")]) == 2
    assert "no coco_pope_<split>.json files" in capsys.readouterr().err
    assert main([*base, "--benchmark", "pope", "--data", pope, "--batch-size", "0"]) == 2
    assert "batch_size must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "textvqa" in capsys.readouterr().out
