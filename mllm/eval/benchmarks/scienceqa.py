"""ScienceQA-IMG (test problems with an image), scored like LLaVA's ``llava/eval/eval_science_qa.py``.

Expected layout under ``data`` (the ``data/scienceqa`` folder of the ScienceQA repo; LLaVA's
``.../eval/scienceqa``)::

    problems.json     {pid: {question, choices: [...], answer: int, hint, image: "image.png"|null, split, ...}}
    pid_splits.json   {"test": [pid, ...], ...}
    images/<split>/<pid>/<image>

Prompt (LLaVA-1.5's ``llava_test_CQM-A.json`` with ``--single-pred-prompt``): ``<image>\\nContext: {hint}\\n``
(only when there is a hint) ``{question}\\nA. {choice}\\nB. ...\\nAnswer with the option's letter from the
given choices directly.`` Headline: ``img_accuracy`` (IMG-Accuracy); ``accuracy`` covers every item loaded
(``image_only=False`` adds the text-only problems, prompted without an image).
"""
from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import read_json, require_keys
from ..scorers.mcq import SQA_OPTIONS, sqa_parse, sqa_pred_index
from ..types import LONG_MAX_NEW_TOKENS, MCQ_ANSWER, Benchmark, BenchmarkDataError, EvalItem, ScoreResult, \
    gather_predictions, prompt_with_image, ratio


@dataclass
class ScienceQA(Benchmark):
    data: str
    split: str = "test"
    image_only: bool = True
    image_dir: str | None = None

    name = "sqa"
    display_name = "ScienceQA-IMG"
    main_metric = "img_accuracy"

    def load(self) -> list[EvalItem]:
        root = Path(self.data)
        problems = read_json(root / "problems.json")
        splits = read_json(root / "pid_splits.json")
        if self.split not in splits:
            raise BenchmarkDataError(f"{root / 'pid_splits.json'} has no split {self.split!r} "
                                     f"(has {sorted(splits)})")
        image_dir = Path(self.image_dir) if self.image_dir else root / "images" / self.split
        items = []
        for pid in splits[self.split]:
            if pid not in problems:
                raise BenchmarkDataError(f"{root / 'problems.json'}: no problem {pid} listed in split {self.split}")
            p = problems[pid]
            require_keys(p, ("question", "choices", "answer"), f"problems.json {pid}")
            if not 1 <= len(p["choices"]) <= len(SQA_OPTIONS):
                raise BenchmarkDataError(f"problems.json {pid}: {len(p['choices'])} choices (LLaVA handles 1-5)")
            has_image = bool(p.get("image"))
            if self.image_only and not has_image:
                continue
            text = f"Context: {p['hint']}\n" if p.get("hint") else ""
            text += p["question"] + "".join(f"\n{string.ascii_uppercase[i]}. {c}" for i, c in enumerate(p["choices"]))
            text += f"\n{MCQ_ANSWER}"
            items.append(EvalItem(
                question_id=str(pid), prompt=prompt_with_image(text) if has_image else text,
                images=(str(image_dir / str(pid) / p["image"]),) if has_image else (),
                max_new_tokens=LONG_MAX_NEW_TOKENS,
                target={"answer": int(p["answer"]), "n_choices": len(p["choices"])},
                meta={"has_image": has_image}))
        return items

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        notes: list[str] = []
        texts = gather_predictions(items, predictions, notes)
        per_sample = {}
        correct = img_correct = img_total = 0
        for it, text in zip(items, texts):
            letter = sqa_parse(text)
            ok = sqa_pred_index(letter, it.target["n_choices"]) == it.target["answer"]
            correct += ok
            if it.meta["has_image"]:
                img_total += 1
                img_correct += ok
            per_sample[it.question_id] = {"score": float(ok), "parsed": letter}
        acc = ratio(correct, len(items), "ScienceQA accuracy", notes, None)
        img = ratio(img_correct, img_total, "ScienceQA IMG-Accuracy", notes, None)
        metrics = {"img_accuracy": None if img is None else img * 100, "accuracy": None if acc is None else acc * 100,
                   "img_n": img_total}
        return self._result(metrics, per_sample, notes, len(items))
