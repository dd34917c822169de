"""Benchmark evaluation with LLaVA-1.5's prompts and official-equivalent scoring.

``load_benchmark(name, data, **options).load()`` gives ``EvalItem``s; the runner generates one answer per item
(greedy, the item's ``max_new_tokens``, text stripped as LLaVA does) and hands ``{question_id: text}`` to
``benchmark.score(items, predictions)`` and ``benchmark.write_submission(items, predictions, out_dir)``.
See docs/eval_suites.md for each benchmark's expected files.
"""
from .judge import JudgeClient, JudgeConfig, JudgeError
from .suites import BENCHMARK_NAMES, BENCHMARKS, get_benchmark, load_benchmark, parse_options
from .synthetic import ExportedBenchmark, export_synthetic
from .types import (LONG_MAX_NEW_TOKENS, MCQ_ANSWER, MCQ_ANSWER_CN, SHORT_ANSWER, SHORT_MAX_NEW_TOKENS, Benchmark,
                    BenchmarkDataError, EvalItem, ScoreResult)

__all__ = [
    "BENCHMARKS", "BENCHMARK_NAMES", "Benchmark", "BenchmarkDataError", "EvalItem", "ExportedBenchmark",
    "JudgeClient", "JudgeConfig", "JudgeError", "LONG_MAX_NEW_TOKENS", "MCQ_ANSWER", "MCQ_ANSWER_CN", "SHORT_ANSWER",
    "SHORT_MAX_NEW_TOKENS", "ScoreResult", "export_synthetic", "get_benchmark", "load_benchmark", "parse_options",
]
