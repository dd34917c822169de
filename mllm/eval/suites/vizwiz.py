"""VizWiz-VQA (LLaVA-1.5 reports test, scored by the EvalAI server).

LLaVA's eval.zip layout (``playground/data/eval/vizwiz``: ``llava_test.jsonl``, the prompts LLaVA used, +
``test/``) is read as is; otherwise the official ``Annotations.zip`` and image zips, under ``data``::

    <split>.json  or  Annotations/<split>.json    [{"image": "VizWiz_test_00000000.jpg", "question": ...,
                                                  "answers": [{"answer", "answer_confidence"}]*10 (train/val),
                                                  "answer_type", "answerable"}]
    <split>/<image>                                images (test/ for the test split)

Prompt: question, then "When the provided information is insufficient, respond with 'Unanswerable'." (the
instruction in LLaVA's ``llava_test.jsonl``; ``unanswerable_hint=False`` drops it), then the short-answer
suffix. Submission: ``[{"image", "answer": EvalAI-normalised text}]`` (``convert_vizwiz_for_submission.py``).
Local score (val): the normalised answer through VizWiz's own VQA accuracy code.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import first_existing, read_json, require_keys, write_json
from ..llava_files import find_question_file, read_questions
from ..scorers.vqa import evalai_normalize, vizwiz_accuracy
from ..types import SHORT_ANSWER, Benchmark, BenchmarkDataError, EvalItem, ScoreResult, prompt_with_image
from .vqav2 import score_vqa_style

UNANSWERABLE_HINT = "When the provided information is insufficient, respond with 'Unanswerable'."


@dataclass
class VizWiz(Benchmark):
    data: str
    split: str = "test"
    image_dir: str | None = None
    unanswerable_hint: bool = True

    name = "vizwiz"
    display_name = "VizWiz"
    main_metric = "accuracy"
    server_side = True

    def _targets(self, root: Path) -> dict:
        """image -> answers, from the split's annotation file when it is there and has answers (val)."""
        for afile in (root / f"{self.split}.json", root / "Annotations" / f"{self.split}.json"):
            if afile.is_file():
                records = read_json(afile)
                return {r["image"]: self._target(r) for r in records if isinstance(r, dict) and "image" in r}
        return {}

    @staticmethod
    def _target(r: dict):
        return {"answers": r["answers"], "answer_type": r.get("answer_type"),
                "answerable": r.get("answerable")} if r.get("answers") else None

    def _load_llava(self, qfile: Path) -> list[EvalItem]:
        rows = read_questions(qfile, benchmark="VizWiz")
        if not all(str(r["image"]).startswith("VizWiz_") for r in rows):
            raise BenchmarkDataError(f"{qfile}: images are not VizWiz_* files: not LLaVA's VizWiz question file")
        root = qfile.parent
        targets = self._targets(root)
        image_dir = Path(self.image_dir) if self.image_dir else root / self.split
        items = []
        for r in rows:
            text = r["text"] if self.unanswerable_hint else r["text"].replace(f"\n{UNANSWERABLE_HINT}", "")
            items.append(EvalItem(question_id=r["image"], prompt=prompt_with_image(text),
                                  images=(str(image_dir / r["image"]),), target=targets.get(r["image"]),
                                  meta={"image": r["image"], "llava_id": r["question_id"]}))
        return items

    def load(self) -> list[EvalItem]:
        qfile = find_question_file(self.data, self.name)
        if qfile is not None:
            return self._load_llava(qfile)
        root = Path(self.data)
        afile = first_existing([root / f"{self.split}.json", root / "Annotations" / f"{self.split}.json"],
                               f"VizWiz {self.split} annotations")
        records = read_json(afile)
        if not isinstance(records, list):
            raise BenchmarkDataError(f"{afile}: expected a JSON list of questions")
        image_dir = Path(self.image_dir) if self.image_dir else root / self.split
        hint = f"\n{UNANSWERABLE_HINT}" if self.unanswerable_hint else ""
        items, seen = [], set()
        for n, r in enumerate(records):
            require_keys(r, ("image", "question"), f"{afile} record")
            if r["image"] in seen:
                raise BenchmarkDataError(f"{afile}: image {r['image']} appears twice (it is the question id)")
            seen.add(r["image"])
            items.append(EvalItem(
                question_id=r["image"], prompt=prompt_with_image(f"{r['question']}{hint}\n{SHORT_ANSWER}"),
                images=(str(image_dir / r["image"]),), target=self._target(r),
                meta={"image": r["image"], "llava_id": n}))
        return items

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        metrics, per_sample, notes = score_vqa_style(items, predictions, vizwiz_accuracy, self.split)
        return self._result(metrics or {"accuracy": None}, per_sample, notes, len(items))

    def write_submission(self, items, predictions, out_dir) -> list[Path]:
        rows = [{"image": it.meta["image"],
                 "answer": evalai_normalize(predictions[it.question_id]) if it.question_id in predictions else ""}
                for it in items]
        return [write_json(Path(out_dir) / f"vizwiz_{self.split}_submission.json", rows)]
