"""TextVQA val (LLaVA-1.5 reports it with OCR tokens in the prompt; ``use_ocr=False`` for the image-only
setting, which lmms-eval uses by default and which scores lower).

Expected layout under ``data`` (official download; LLaVA's ``.../eval/textvqa``)::

    TextVQA_0.5.1_val.json      {"data": [{question_id, image_id, question, answers[10], ocr_tokens, ...}]}
    train_images/<image_id>.jpg (val images ship in the train_val zip)

Prompt: ``<image>\\n{question}\\nReference OCR token: {tok1}, {tok2}, ...\\nAnswer the question using a single
word or phrase.`` (the OCR line is omitted when an image has no tokens). LLaVA's own jsonl was built from an
OCR source we cannot check offline; the annotation's ``ocr_tokens`` are the reproducible stand-in.
Score: LLaVA's ``m4c_evaluator.TextVQAAccuracyEvaluator``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import read_json, require_keys
from ..scorers.vqa import evalai_normalize, textvqa_accuracy
from ..types import SHORT_ANSWER, Benchmark, BenchmarkDataError, EvalItem, ScoreResult, gather_predictions, \
    prompt_with_image


@dataclass
class TextVQA(Benchmark):
    data: str
    use_ocr: bool = True
    annotation_file: str = "TextVQA_0.5.1_val.json"
    image_dir: str | None = None

    name = "textvqa"
    display_name = "TextVQA"
    main_metric = "accuracy"

    def load(self) -> list[EvalItem]:
        afile = Path(self.data) / self.annotation_file
        data = read_json(afile)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise BenchmarkDataError(f"{afile}: expected an object with a 'data' list")
        image_dir = Path(self.image_dir) if self.image_dir else Path(self.data) / "train_images"
        items = []
        for r in data["data"]:
            require_keys(r, ("question_id", "image_id", "question"), f"{afile} record")
            text = r["question"]
            tokens = r.get("ocr_tokens") or []
            if self.use_ocr and tokens:
                text += "\nReference OCR token: " + ", ".join(tokens)
            items.append(EvalItem(
                question_id=str(r["question_id"]), prompt=prompt_with_image(f"{text}\n{SHORT_ANSWER}"),
                images=(str(image_dir / f"{r['image_id']}.jpg"),),
                target={"answers": r["answers"]} if r.get("answers") is not None else None,
                meta={"image_id": r["image_id"]}))
        return items

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        notes: list[str] = []
        texts = gather_predictions(items, predictions, notes)
        if any(it.target is None for it in items):
            notes.append("no answers in the annotation file (test split): nothing to score locally")
            return self._result({"accuracy": None}, {}, notes, len(items))
        per_sample, scores = {}, []
        odd = sum(1 for it in items if len(it.target["answers"]) != 10)
        if odd:
            notes.append(f"{odd} questions do not have 10 answers (m4c asserts 10); scored leave-one-out over "
                         "the answers present, 0 when there are none")
        for it, text in zip(items, texts):
            s = textvqa_accuracy(text, it.target["answers"])
            scores.append(s)
            per_sample[it.question_id] = {"score": s, "answer": evalai_normalize(text)}
        acc = 100.0 * (sum(scores) / len(scores)) if scores else None  # m4c: mean, then x100 when printed
        if not scores:
            notes.append("no items to score; accuracy is None (m4c divides by zero)")
        return self._result({"accuracy": acc, "use_ocr": self.use_ocr}, per_sample, notes, len(items))
