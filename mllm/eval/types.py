"""The contract between benchmark readers, scorers and the runner: items in, predictions in, metrics out.

A benchmark turns its files into ``EvalItem``s (one model call each), and turns ``{question_id: text}`` back
into a ``ScoreResult``. The runner never looks inside ``target``/``meta``; it only needs ``question_id``
(stable cache key), ``prompt`` (the human turn, with one ``<image>`` marker per image), ``images`` and
``max_new_tokens``.
"""
from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..constants import IMAGE_TOKEN
from ..errors import UserError

# LLaVA-1.5's answer-format instructions (docs/Evaluation.md, llava/eval/model_vqa_mmbench.py).
SHORT_ANSWER = "Answer the question using a single word or phrase."
MCQ_ANSWER = "Answer with the option's letter from the given choices directly."
MCQ_ANSWER_CN = "请直接回答选项字母。"
# LLaVA's loaders: model_vqa_loader (short answers) defaults to 128 new tokens, the MCQ/open-ended ones use 1024.
SHORT_MAX_NEW_TOKENS = 128
LONG_MAX_NEW_TOKENS = 1024


class BenchmarkDataError(UserError, ValueError):
    """A benchmark's files are missing or malformed; the message names the file and what is wrong."""


@dataclass(frozen=True)
class EvalItem:
    """One model call: a single human turn about zero or more images.

    ``question_id`` is unique within a benchmark and stable across runs (the prediction cache key).
    ``prompt`` is the human turn before the conversation template; it holds one ``<image>`` marker per entry
    of ``images`` (absolute paths). ``target`` is what the scorer needs (answers, label, options...) and
    ``meta`` what reports and submission files need (category, split, original ids); both JSON-serialisable.
    """

    question_id: str
    prompt: str
    images: tuple[str, ...] = ()
    max_new_tokens: int = SHORT_MAX_NEW_TOKENS
    target: Any = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.question_id, str) or not self.question_id:
            raise ValueError(f"question_id must be a non-empty str, got {self.question_id!r}")
        n = self.prompt.count(IMAGE_TOKEN)
        if n != len(self.images):
            raise ValueError(f"item {self.question_id}: prompt has {n} {IMAGE_TOKEN} markers but "
                             f"{len(self.images)} images")
        if self.max_new_tokens < 1:
            raise ValueError(f"item {self.question_id}: max_new_tokens must be >= 1")

    @property
    def image(self) -> str | None:
        """The single image path, or None for a text-only item."""
        return self.images[0] if self.images else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ScoreResult:
    """``metrics``: JSON-ready aggregates (accuracies in percent, as papers report them) with ``benchmark``,
    ``main_metric`` (the key of the headline number), ``n`` and ``notes`` (why a value is defined rather than
    computed, skipped items...). ``per_sample``: question_id -> {"score": 0..1 or None, ...parsed fields}."""

    metrics: dict[str, Any]
    per_sample: dict[str, dict] = field(default_factory=dict)

    @property
    def main(self):
        return self.metrics.get(self.metrics.get("main_metric"))


def prompt_with_image(text: str, n_images: int = 1) -> str:
    """LLaVA's layout: image markers first, each followed by a newline, then the text."""
    return f"{IMAGE_TOKEN}\n" * n_images + text


class Benchmark(abc.ABC):
    """Base class of a benchmark reader + scorer. Subclasses are dataclasses whose fields are the options.

    ``name`` is the registry key, ``main_metric`` the metrics key of the headline number and
    ``server_side`` whether the official number comes from an evaluation server (then
    ``write_submission`` writes the file to upload).
    """

    name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    main_metric: ClassVar[str] = "accuracy"
    server_side: ClassVar[bool] = False
    # What the official code does with a question that has no answer: "wrong" (it stays in the denominator,
    # e.g. eval_science_qa.py, convert_seed_for_submission.py) or "excluded" (the metric is computed over the
    # answers present, e.g. m4c's TextVQA evaluator, eval_pope.py).
    missing_answers: ClassVar[str] = "wrong"

    @abc.abstractmethod
    def load(self) -> list[EvalItem]:
        """Read the benchmark's files into items (raise BenchmarkDataError naming what is wrong)."""

    @abc.abstractmethod
    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        """Score predictions (question_id -> text) exactly as the official code does."""

    def write_submission(self, items: Sequence[EvalItem], predictions: Mapping[str, str],
                         out_dir: str | Path) -> list[Path]:
        """Write server/judge answer files under ``out_dir``; returns their paths ([] when none apply)."""
        return []

    @staticmethod
    def llava_key(item: EvalItem) -> str:
        """The ``question_id`` LLaVA's answers file uses for ``item`` (as text); several items may share one."""
        return str(item.meta.get("llava_id", item.question_id))

    @staticmethod
    def llava_answer_key(record: Mapping) -> str:
        """The key of one line of LLaVA's answers file, comparable with ``llava_key``."""
        return str(record["question_id"])

    @classmethod
    def options(cls) -> dict[str, Any]:
        """Option name -> default, for command-line help (``data`` excluded)."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.name != "data"}  # type: ignore[arg-type]

    # helpers shared by subclasses -------------------------------------------------------------------------
    def _result(self, metrics: dict, per_sample: dict, notes: list[str], n: int) -> ScoreResult:
        head = {"benchmark": self.name, "main_metric": self.main_metric, "n": n}
        return ScoreResult({**head, **metrics, "notes": notes}, per_sample)


def gather_predictions(items: Sequence[EvalItem], predictions: Mapping[str, str], notes: list[str],
                       missing: str = "wrong", official: str = "") -> tuple[list[EvalItem], list[str]]:
    """(items, answer texts) to score. A missing or None prediction is the empty answer (``missing="wrong"``)
    or leaves the item out (``"excluded"``), as ``official`` (the official script's name) does; either way
    it is counted and noted."""
    kept, texts, absent = [], [], []
    for it in items:
        text = predictions.get(it.question_id)
        if text is None:
            absent.append(it.question_id)
            if missing == "excluded":
                continue
            text = ""
        kept.append(it)
        texts.append(str(text))
    if absent:
        how = ("left out of every denominator" if missing == "excluded" else "scored as empty (wrong) answers")
        where = f", as {official} does" if official else ""
        notes.append(f"{len(absent)} of {len(items)} items had no prediction and were {how}{where} "
                     f"(first: {', '.join(absent[:5])})")
    return kept, texts


def ratio(num: float, den: float, what: str, notes: list[str], default: float | None = 0.0) -> float | None:
    """num/den, or ``default`` with a note when den == 0 (where the official code divides by zero)."""
    if den == 0:
        notes.append(f"{what}: zero denominator (the official code raises ZeroDivisionError); reported as {default}")
        return default
    return num / den
