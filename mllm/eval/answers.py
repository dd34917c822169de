"""Answers produced elsewhere, matched to a benchmark's items for re-scoring without a model (``eval --answers``).

Accepted files:

- LLaVA's answers JSONL (``model_vqa*.py``: ``question_id, prompt, text, answer_id, model_id[, round_id]``);
- this project's ``predictions.jsonl`` (``question_id, prediction, ...``), or any JSONL with
  ``question_id`` + ``prediction`` (SEED-Bench's upload file);
- the ``*_output.jsonl`` of LLaVA's ``eval_science_qa.py`` (``{"correct": [...], "incorrect": [...]}``, each
  with ``question_id``, ``question`` = the prompt, ``pred`` = the answer).

LLaVA's question ids are matched through each benchmark's ``llava_key`` (MMBench adds ``round_id``). Where
LLaVA's ids repeat (MME: one id per image, TextVQA: the image id), the answer's prompt picks the question, by
its exact text or else its first line (what ``eval_textvqa.py`` matches on), else the order within the id.
Bad files are reported, never silently absorbed: unknown ids are ignored and named; a repeated answer
replaces the earlier one (the official scripts build ``{question_id: answer}`` dicts) and is named; questions
without an answer are named and scored as the benchmark's official code scores a missing answer.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .llava_files import strip_image_marker
from .types import Benchmark, BenchmarkDataError, EvalItem

MAX_NAMED = 20  # ids listed per kind of problem in the report


@dataclass
class AnswerRecord:
    question_id: str
    text: str | None
    prompt: str | None = None
    line: int = 0
    raw: dict = field(default_factory=dict)


@dataclass
class AnswerFile:
    path: Path
    format: str  # "llava" | "predictions" | "llava_sqa_output"
    records: list[AnswerRecord]
    model_id: str | None = None


@dataclass
class MatchReport:
    """What happened to each line and each question; JSON-ready via ``to_dict``."""

    n_answers: int
    matched: int
    unknown: list[str] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"answers": self.n_answers, "matched": self.matched,
                **{k: {"count": len(v), "ids": v[:MAX_NAMED]}
                   for k, v in (("unknown", self.unknown), ("duplicate", self.duplicate), ("missing", self.missing))}}

    def notes(self, path: Path) -> list[str]:
        out = []
        if self.unknown:
            out.append(f"answers file {path.name}: {len(self.unknown)} answers have question ids that are not in "
                       f"this benchmark's questions and were ignored: {_names(self.unknown)}")
        if self.duplicate:
            out.append(f"answers file {path.name}: {len(self.duplicate)} questions are answered more than once; the "
                       f"last answer counts (the official scripts key answers by question id): "
                       f"{_names(self.duplicate)}")
        if self.missing:
            out.append(f"answers file {path.name}: {len(self.missing)} questions have no answer: "
                       f"{_names(self.missing)}")
        return out


def _names(ids: list[str]) -> str:
    return ", ".join(ids[:MAX_NAMED]) + (f" ... ({len(ids) - MAX_NAMED} more)" if len(ids) > MAX_NAMED else "")


def read_answers(path: str | Path) -> AnswerFile:
    """Read an answers file in any accepted format (one-line error naming the line when it is none)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkDataError(f"answers file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:  # eval_science_qa.py's --output-file is one indented JSON object despite its .jsonl name
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict) and {"correct", "incorrect"} <= set(whole):
        rows = [r for k in ("correct", "incorrect") for r in whole[k]]
        records = [AnswerRecord(str(r["question_id"]), r.get("pred"), r.get("question"), n, r)
                   for n, r in enumerate(rows, 1)]
        return AnswerFile(path, "llava_sqa_output", records)
    records, formats, model_ids = [], set(), set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkDataError(f"{path}:{n}: not valid JSON ({e})") from None
        if not isinstance(r, dict) or "question_id" not in r or not (
                "prediction" in r or "text" in r and {"prompt", "answer_id", "model_id"} & set(r)):
            raise BenchmarkDataError(f"{path}:{n}: not an answer (needs question_id and either text with prompt/"
                                     "answer_id/model_id (LLaVA's answers) or prediction (this project)); a "
                                     "question or annotation file is not an answers file")
        fmt = "llava" if "text" in r else "predictions"
        formats.add(fmt)
        if r.get("model_id"):
            model_ids.add(str(r["model_id"]))
        answer = r["text"] if fmt == "llava" else r["prediction"]
        records.append(AnswerRecord(str(r["question_id"]), None if answer is None else str(answer),
                                    r.get("prompt"), n, r))
    if not records:
        raise BenchmarkDataError(f"{path}: no answers")
    if len(formats) > 1:
        raise BenchmarkDataError(f"{path}: mixes LLaVA answers (text) and predictions lines")
    return AnswerFile(path, formats.pop(), records, model_ids.pop() if len(model_ids) == 1 else None)


def _first_line(text: str | None) -> str:
    return strip_image_marker(text or "").split("\n")[0].strip().lower()


def match_answers(bench: Benchmark, items: list[EvalItem], answers: AnswerFile) -> tuple[dict[str, str], MatchReport]:
    """``{question_id: answer text}`` for ``items`` and the report of unknown / duplicate / missing ids."""
    if answers.format == "predictions":
        groups = {it.question_id: [it] for it in items}
        key_of = (lambda rec: rec.question_id)
    else:
        groups = defaultdict(list)
        for it in items:
            groups[bench.llava_key(it)].append(it)
        key_of = (lambda rec: bench.llava_answer_key(rec.raw) if answers.format == "llava" else rec.question_id)
    predictions: dict[str, str] = {}
    answered_by: dict[str, int] = {}
    report = MatchReport(n_answers=len(answers.records), matched=0)
    taken: dict[str, int] = defaultdict(int)  # answers seen per shared id, for the positional fallback
    for rec in answers.records:
        group = groups.get(key_of(rec))
        if not group:
            report.unknown.append(key_of(rec))
            continue
        item = group[0] if len(group) == 1 else _pick(group, rec, taken)
        if item.question_id in answered_by:
            report.duplicate.append(item.question_id)
        answered_by[item.question_id] = rec.line
        if rec.text is not None:
            predictions[item.question_id] = rec.text
    report.matched = len(answered_by)
    report.missing = [it.question_id for it in items if it.question_id not in predictions]
    if not answered_by:
        raise BenchmarkDataError(f"none of the {len(answers.records)} answers in {answers.path} matches a question "
                                 f"of {bench.name} in {getattr(bench, 'data', '?')} (first id: "
                                 f"{answers.records[0].question_id}): is it this benchmark's answers file?")
    return predictions, report


def _pick(group: list[EvalItem], rec: AnswerRecord, taken: dict[str, int]) -> EvalItem:
    """The item of a shared LLaVA id that ``rec`` answers: same prompt, else same first line, else the next in
    order (LLaVA's answers keep its question file's order)."""
    prompt = strip_image_marker(rec.prompt or "")
    for same in (lambda it: strip_image_marker(it.prompt) == prompt,
                 lambda it: _first_line(it.prompt) == _first_line(rec.prompt)):
        hits = [it for it in group if same(it)]
        if len(hits) == 1:
            return hits[0]
    key = rec.question_id
    index = taken[key] % len(group)
    taken[key] += 1
    return group[index]


__all__ = ["AnswerFile", "AnswerRecord", "MatchReport", "match_answers", "read_answers"]
