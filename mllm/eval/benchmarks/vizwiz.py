"""VizWiz-VQA (LLaVA-1.5 reports test, scored by the EvalAI server).

Expected layout under ``data`` (official ``Annotations.zip`` and image zips; LLaVA's ``.../eval/vizwiz``)::

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

    def load(self) -> list[EvalItem]:
        root = Path(self.data)
        afile = first_existing([root / f"{self.split}.json", root / "Annotations" / f"{self.split}.json"],
                               f"VizWiz {self.split} annotations")
        records = read_json(afile)
        if not isinstance(records, list):
            raise BenchmarkDataError(f"{afile}: expected a JSON list of questions")
        image_dir = Path(self.image_dir) if self.image_dir else root / self.split
        hint = f"\n{UNANSWERABLE_HINT}" if self.unanswerable_hint else ""
        items, seen = [], set()
        for r in records:
            require_keys(r, ("image", "question"), f"{afile} record")
            if r["image"] in seen:
                raise BenchmarkDataError(f"{afile}: image {r['image']} appears twice (it is the question id)")
            seen.add(r["image"])
            target = None
            if r.get("answers"):
                target = {"answers": r["answers"], "answer_type": r.get("answer_type"),
                          "answerable": r.get("answerable")}
            items.append(EvalItem(
                question_id=r["image"], prompt=prompt_with_image(f"{r['question']}{hint}\n{SHORT_ANSWER}"),
                images=(str(image_dir / r["image"]),), target=target, meta={"image": r["image"]}))
        return items

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        metrics, per_sample, notes = score_vqa_style(items, predictions, vizwiz_accuracy, self.split)
        return self._result(metrics or {"accuracy": None}, per_sample, notes, len(items))

    def write_submission(self, items, predictions, out_dir) -> list[Path]:
        rows = [{"image": it.meta["image"],
                 "answer": evalai_normalize(predictions[it.question_id]) if it.question_id in predictions else ""}
                for it in items]
        return [write_json(Path(out_dir) / f"vizwiz_{self.split}_submission.json", rows)]
