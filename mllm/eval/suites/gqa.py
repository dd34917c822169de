"""GQA testdev-balanced (LLaVA-1.5's split), scored locally like LLaVA + the official ``eval.py``.

Two layouts under ``data``:

- LLaVA's eval.zip (``playground/data/eval/gqa``): ``llava_gqa_testdev_balanced.jsonl`` (the prompts LLaVA
  used) + ``data/images/`` + ``data/testdev_balanced_questions.json`` for the answers (LLaVA's GQADIR).
- GQA's own download (LLaVA's ``gqa/data``)::

    <split>_questions.json    {qid: {imageId, question, answer, isBalanced, types: {structural, semantic},
                               groups: {global, local}, ...}}   (split default: testdev_balanced)
    images/<imageId>.jpg

Prompt: ``<image>\\n{question}\\nAnswer the question using a single word or phrase.`` The prediction becomes
``text.rstrip('.').lower()`` and must equal the gold answer exactly. ``write_submission`` writes the
predictions file eval.py reads (``[{"questionId", "prediction"}]``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import read_json, require_keys, write_json
from ..llava_files import find_question_file, read_questions
from ..scorers.gqa import gqa_convert, gqa_scores
from ..types import SHORT_ANSWER, Benchmark, BenchmarkDataError, EvalItem, ScoreResult, gather_predictions, \
    prompt_with_image


@dataclass
class GQA(Benchmark):
    data: str
    split: str = "testdev_balanced"
    image_dir: str | None = None

    name = "gqa"
    display_name = "GQA"
    main_metric = "accuracy"

    def _questions(self, gqa_dir: Path, required: bool = True) -> dict:
        qfile = gqa_dir / f"{self.split}_questions.json"
        if not required and not qfile.is_file():
            return {}
        questions = read_json(qfile)
        if not isinstance(questions, dict):
            raise BenchmarkDataError(f"{qfile}: expected an object mapping question ids to questions")
        for qid, q in questions.items():
            require_keys(q, ("imageId", "question"), f"{qfile} question {qid}")
        return questions

    @staticmethod
    def _target(q: dict | None):
        if q is None or "answer" not in q:
            return None
        types = q.get("types") or {}
        return {"answer": q["answer"], "balanced": bool(q.get("isBalanced", True)),
                "structural": types.get("structural"), "semantic": types.get("semantic"),
                "group": (q.get("groups") or {}).get("global")}

    def load(self) -> list[EvalItem]:
        qfile = find_question_file(self.data, self.name)
        if qfile is not None:
            root = qfile.parent
            questions = self._questions(root / "data", required=False)
            image_dir = Path(self.image_dir) if self.image_dir else root / "data" / "images"
            rows = read_questions(qfile, benchmark="GQA")
            if questions and (unknown := [r["question_id"] for r in rows if str(r["question_id"]) not in questions]):
                raise BenchmarkDataError(f"{qfile}: {len(unknown)} question ids (first {unknown[0]}) are not in "
                                         f"{root / 'data' / f'{self.split}_questions.json'}")
            return [EvalItem(question_id=str(r["question_id"]), prompt=prompt_with_image(r["text"]),
                             images=(str(image_dir / r["image"]),), target=self._target(questions.get(
                                 str(r["question_id"]))), meta={"imageId": Path(r["image"]).stem}) for r in rows]
        questions = self._questions(Path(self.data))
        image_dir = Path(self.image_dir) if self.image_dir else Path(self.data) / "images"
        return [EvalItem(question_id=str(qid), prompt=prompt_with_image(f"{q['question']}\n{SHORT_ANSWER}"),
                         images=(str(image_dir / f"{q['imageId']}.jpg"),), target=self._target(q),
                         meta={"imageId": q["imageId"]}) for qid, q in questions.items()]

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        notes: list[str] = []
        if any(it.target is None for it in items):
            notes.append(f"no answers ({self.split}_questions.json absent, or a split without answers): nothing to "
                         "score locally")
            return self._result({"accuracy": None}, {}, notes, len(items))
        _, texts = gather_predictions(items, predictions, notes, self.missing_answers)
        rows, per_sample = [], {}
        for it, text in zip(items, texts):
            pred = gqa_convert(text)
            rows.append({**it.target, "prediction": pred})
            per_sample[it.question_id] = {"score": float(pred == it.target["answer"]) if it.target["balanced"]
                                          else None, "prediction": pred}
        return self._result(gqa_scores(rows, notes), per_sample, notes, len(items))

    def write_submission(self, items, predictions, out_dir) -> list[Path]:
        rows = [{"questionId": it.question_id, "prediction": gqa_convert(predictions.get(it.question_id, ""))}
                for it in items]
        return [write_json(Path(out_dir) / f"{self.split}_predictions.json", rows)]
