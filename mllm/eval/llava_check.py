"""Check this project against LLaVA-1.5's own eval files, on a user's copy of them (``scripts/check_llava_eval.py``).

Two checks over a ``playground/data/eval`` folder (LLaVA's eval.zip plus the benchmarks' own files):

1. **Re-scoring**: LLaVA-v1.5-13B's published answers (``<bench>/answers/llava-v1.5-13b*.jsonl``), scored by
   ``eval --answers``, must give what LLaVA's unchanged scripts print (POPE per split, ScienceQA-IMG, MME
   perception and cognition). ScienceQA's and MME's files may not be redistributed, so the test suite ships
   only POPE as a fixture; this is the same check on your own copy.
2. **Prompts**: for every benchmark whose original files sit next to LLaVA's question file, the prompts built
   from the original files must be byte-identical to LLaVA's (MMBench: to the prompts recorded in LLaVA's
   answers, as its question file is the TSV itself).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .answers import match_answers, read_answers
from .llava_files import QUESTION_FILES, find_question_file, strip_image_marker
from .suites import load_benchmark
from .suites.mme import MME, eval_tool_questions
from .types import MCQ_ANSWER, MCQ_ANSWER_CN, EvalItem

# benchmark -> folder under playground/data/eval (LLaVA's scripts/v1_5/eval/*.sh)
FOLDERS = {"vqav2": "vqav2", "gqa": "gqa", "vizwiz": "vizwiz", "textvqa": "textvqa", "pope": "pope", "mme": "MME",
           "sqa": "scienceqa", "seed": "seed_bench", "mmvet": "mm-vet", "mmbench": "mmbench"}

# What LLaVA's unchanged scripts print on LLaVA-v1.5-13B's answers (eval_pope.py fractions, eval_science_qa.py's
# two-decimal percentages, calculation.py's totals): (answers files to try, option overrides, {metric: value}).
OFFICIAL_13B = {
    "pope": (("answers/llava-v1.5-13b.jsonl",), {}, {
        "splits.adversarial.accuracy": 0.855, "splits.adversarial.precision": 0.9099307159353349,
        "splits.adversarial.recall": 0.788, "splits.adversarial.f1": 0.8445873526259379,
        "splits.adversarial.yes_ratio": 0.433,
        "splits.popular.accuracy": 0.8743333333333333, "splits.popular.precision": 0.9524576954069299,
        "splits.popular.recall": 0.788, "splits.popular.f1": 0.8624589565851879,
        "splits.popular.yes_ratio": 0.4136666666666667,
        "splits.random.accuracy": 0.8800687285223368, "splits.random.precision": 0.9744435284418796,
        "splits.random.recall": 0.788, "splits.random.f1": 0.8713601179506082,
        "splits.random.yes_ratio": 0.4168384879725086}),
    "sqa": (("answers/llava-v1.5-13b.jsonl", "answers/llava-v1.5-13b_output.jsonl"), {"image_only": False},
            {"img_accuracy": 71.64, "accuracy": 74.39}),
    "mme": (("answers/llava-v1.5-13b.jsonl",), {}, {"perception": 1531.3187274909965, "cognition": 295.3571428571429}),
}
SCALE = {"pope": 100.0}  # eval_pope.py prints fractions, we report percent
DECIMALS = {"sqa": 2}  # eval_science_qa.py prints two decimals


@dataclass
class CheckResult:
    benchmark: str
    kind: str  # "rescore" | "prompts"
    passed: bool | None  # None: skipped
    detail: str
    counts: tuple[int, int] = (0, 0)  # prompts: (identical, compared)
    mismatches: list[str] = field(default_factory=list)


def _lookup(metrics: dict, dotted: str):
    value = metrics
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def rescore_check(eval_dir: Path, bench: str) -> CheckResult:
    """LLaVA-v1.5-13B's answers through ``eval --answers`` vs the official figures."""
    folder = eval_dir / FOLDERS[bench]
    names, options, expected = OFFICIAL_13B[bench]
    answers_path = None
    for name in names:  # LLaVA's PR ships ScienceQA's answers only inside eval_science_qa.py's output
        candidate = folder / name
        if candidate.is_file() and candidate.read_text(encoding="utf-8").count("\n") > 1:
            answers_path = candidate
            break
    if answers_path is None:
        return CheckResult(bench, "rescore", None, f"no LLaVA-v1.5-13B answers under {folder / 'answers'}")
    b = load_benchmark(bench, folder, **options)
    items = b.load()
    predictions, report = match_answers(b, items, read_answers(answers_path))
    metrics = b.score(items, predictions).metrics
    bad = []
    for key, want in expected.items():
        got = _lookup(metrics, key)
        if got is not None:
            got /= SCALE.get(bench, 1.0)
            if bench in DECIMALS:
                got = round(got, DECIMALS[bench])
        if got is None or not math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12):
            bad.append(f"{key}: {got} (official {want})")
    shown = ", ".join(f"{k}={_lookup(metrics, k)}" for k in expected if "." not in k) or f"{len(expected)} values"
    detail = f"{answers_path.name}: {report.matched} answers; " + ("; ".join(bad) if bad else f"equal ({shown})")
    return CheckResult(bench, "rescore", not bad, detail, mismatches=bad)


def _original_view(folder: Path, tmp: Path) -> Path:
    """``folder`` without LLaVA's question files (symlinks), so the readers fall back to the original files."""
    skip = {n for ns in QUESTION_FILES.values() for n in ns}
    view = tmp / folder.name
    view.mkdir()
    for p in folder.iterdir():
        if p.name not in skip:
            (view / p.name).symlink_to(p.resolve())
    return view


def _keyed(items, key) -> dict:
    out: dict = {}
    for it in items:
        out.setdefault(key(it), []).append(it)
    return out


def prompt_check(eval_dir: Path, bench: str) -> CheckResult:
    """Prompts built from the original files vs LLaVA's question file, question by question."""
    folder = eval_dir / FOLDERS[bench]
    if bench == "mmbench":
        return _mmbench_prompts(folder)
    qfile = find_question_file(folder, bench) if folder.is_dir() else None
    if qfile is None:
        return CheckResult(bench, "prompts", None, f"no LLaVA question file in {folder}")
    options = {"image_only": False} if bench == "sqa" else {}
    llava_items = load_benchmark(bench, qfile, **options).load()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if bench == "mme" and not (folder / "MME_Benchmark_release_version").is_dir():
                original = _mme_from_eval_tool(folder)
            else:
                original = load_benchmark(bench, _original_view(folder, Path(tmp)), **options).load()
        except (ValueError, OSError) as e:  # name the user's folder, not the temporary view of it
            return CheckResult(bench, "prompts", None, "original files not usable ("
                               + str(e).replace(str(Path(tmp) / folder.name), str(folder)) + ")")
    key = (lambda it: (it.meta["category"], Path(it.meta["image"]).stem, it.question_id.rsplit("/", 1)[1])) \
        if bench == "mme" else (lambda it: it.question_id)
    ours = _keyed(original, key)
    same, compared, bad = 0, 0, []
    for it in llava_items:
        mine = ours.get(key(it))
        if not mine:
            continue
        compared += 1
        if mine[0].prompt == it.prompt:
            same += 1
        elif len(bad) < 10:
            bad.append(f"{it.question_id}: LLaVA {it.prompt!r} != ours {mine[0].prompt!r}")
    detail = f"{same}/{compared} identical ({len(llava_items)} questions in {qfile.name})"
    return CheckResult(bench, "prompts", compared > 0 and same == compared, detail, (same, compared), bad)


def _mme_from_eval_tool(folder: Path) -> list:
    """MME's questions from the official eval tool's list (no images needed), prompted as our reader does."""
    bench = MME(data=str(folder))
    return [EvalItem(question_id=f"{q['task']}/{q['stem']}/{q['k']}", prompt=bench._prompt(q["question"]),
                     images=("-",), meta={"category": q["task"], "image": q["stem"]})
            for q in eval_tool_questions(folder / "eval_tool" / "Your_Results")]


def _mmbench_prompts(folder: Path) -> CheckResult:
    tsvs = sorted(folder.glob("mmbench_dev*.tsv"))
    answers = sorted(folder.glob("answers/*/llava-v1.5-13b.jsonl"))
    if not tsvs or not answers:
        return CheckResult("mmbench", "prompts", None, f"no MMBench TSV and LLaVA answers in {folder}")
    bench = load_benchmark("mmbench", tsvs[0], circular=False)
    items = {it.question_id: it for it in bench.load()}
    same, compared, bad = 0, 0, []
    for line in answers[0].read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        it = items.get(bench.llava_answer_key(rec))
        if it is None:
            continue
        compared += 1
        text = strip_image_marker(it.prompt)
        for suffix in ("\n" + MCQ_ANSWER, "\n" + MCQ_ANSWER_CN):
            text = text[: -len(suffix)] if text.endswith(suffix) else text
        same += text == rec["prompt"]
        if text != rec["prompt"] and len(bad) < 10:
            bad.append(f"{it.question_id}: LLaVA {rec['prompt']!r} != ours {text!r}")
    return CheckResult("mmbench", "prompts", compared > 0 and same == compared,
                       f"{same}/{compared} identical (vs the prompts in {answers[0].name})", (same, compared), bad)


def run_checks(eval_dir: str | Path, benchmarks=None) -> list[CheckResult]:
    eval_dir = Path(eval_dir)
    results = []
    for bench in benchmarks or FOLDERS:
        with contextlib.redirect_stdout(io.StringIO()):
            if bench in OFFICIAL_13B:
                results.append(rescore_check(eval_dir, bench))
            results.append(prompt_check(eval_dir, bench))
    return results


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="check_llava_eval.py", description=__doc__.split("\n\n")[0])
    p.add_argument("eval_dir", help="LLaVA's playground/data/eval folder (with the benchmarks' own files added)")
    p.add_argument("--benchmark", action="append", choices=sorted(FOLDERS), help="only these (repeatable)")
    args = p.parse_args(argv)
    results = run_checks(args.eval_dir, args.benchmark)
    total = [0, 0]
    for r in results:
        status = {True: "PASS", False: "FAIL", None: "skip"}[r.passed]
        print(f"{status}  {r.benchmark:<8} {r.kind:<8} {r.detail}")
        for m in r.mismatches:
            print(f"        {m}")
        total[0] += r.counts[0]
        total[1] += r.counts[1]
    print(f"prompts byte-identical to LLaVA's: {total[0]:,}/{total[1]:,}")
    return 1 if any(r.passed is False for r in results) else 0


__all__ = ["CheckResult", "OFFICIAL_13B", "main", "prompt_check", "rescore_check", "run_checks"]
