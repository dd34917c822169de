"""TextVQA val (LLaVA-1.5 reports it with OCR tokens in the prompt; ``use_ocr=False`` for the image-only
setting, which lmms-eval uses by default and which scores lower).

Two layouts under ``data``:

- LLaVA's eval.zip (``playground/data/eval/textvqa``): ``llava_textvqa_val_v051_ocr.jsonl`` (the prompts LLaVA
  used; its ``question_id`` is the image id) + ``train_images/`` + ``TextVQA_0.5.1_val.json`` for the answers.
- TextVQA's own files: ``TextVQA_0.5.1_val.json`` (``{"data": [{question_id, image_id, question, answers[10],
  ocr_tokens, ...}]}``) + ``train_images/<image_id>.jpg`` (val images ship in the train_val zip); the prompt is
  built as LLaVA's file has it: ``<image>\n{Question}\nReference OCR token: {tok1}, {tok2}, ...\nAnswer the
  question using a single word or phrase.``, the question's first letter upper-cased and the OCR line kept
  even when an image has no tokens.

As LLaVA's ``eval_textvqa.py`` does, a question's answers are looked up by (image id, lower-cased question),
the last annotation winning when two share that key; score: its ``m4c_evaluator.TextVQAAccuracyEvaluator``,
averaged over the questions that have an answer (m4c averages over the answers it is given).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import read_json, require_keys
from ..llava_files import find_question_file, read_questions
from ..scorers.vqa import evalai_normalize, textvqa_accuracy
from ..types import SHORT_ANSWER, Benchmark, BenchmarkDataError, EvalItem, ScoreResult, gather_predictions, \
    prompt_with_image

OCR_PREFIX = "Reference OCR token: "


def llava_textvqa_text(question: str, ocr_tokens, use_ocr: bool = True) -> str:
    """The text of LLaVA's ``llava_textvqa_val_v051_ocr.jsonl`` for one question (without ``<image>``)."""
    text = question[:1].upper() + question[1:]
    if use_ocr:
        text += "\n" + OCR_PREFIX + ", ".join(ocr_tokens or [])
    return f"{text}\n{SHORT_ANSWER}"


@dataclass
class TextVQA(Benchmark):
    data: str
    use_ocr: bool = True
    annotation_file: str = "TextVQA_0.5.1_val.json"
    image_dir: str | None = None

    name = "textvqa"
    display_name = "TextVQA"
    main_metric = "accuracy"
    missing_answers = "excluded"

    def _annotations(self, root: Path, required: bool) -> tuple[list[dict], dict]:
        """(records, {(image_id, question.lower()): record}) as eval_textvqa.py builds the lookup."""
        afile = root / self.annotation_file
        if not afile.is_file() and not required:
            return [], {}
        data = read_json(afile)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise BenchmarkDataError(f"{afile}: expected an object with a 'data' list")
        for r in data["data"]:
            require_keys(r, ("question_id", "image_id", "question"), f"{afile} record")
        return data["data"], {(r["image_id"], r["question"].lower()): r for r in data["data"]}

    @staticmethod
    def _target(record: dict | None):
        return {"answers": record["answers"]} if record and record.get("answers") is not None else None

    def load(self) -> list[EvalItem]:
        qfile = find_question_file(self.data, self.name)
        if qfile is not None:
            return self._load_llava(qfile)
        root = Path(self.data)
        records, lookup = self._annotations(root, required=True)
        image_dir = Path(self.image_dir) if self.image_dir else root / "train_images"
        return [EvalItem(
            question_id=str(r["question_id"]),
            prompt=prompt_with_image(llava_textvqa_text(r["question"], r.get("ocr_tokens"), self.use_ocr)),
            images=(str(image_dir / f"{r['image_id']}.jpg"),),
            target=self._target(lookup[(r["image_id"], r["question"].lower())]),
            meta={"image_id": r["image_id"], "llava_id": r["image_id"]}) for r in records]

    def _load_llava(self, qfile: Path) -> list[EvalItem]:
        rows = read_questions(qfile, ("question_id", "image", "text"), "TextVQA")
        root = qfile.parent
        _, lookup = self._annotations(root, required=False)
        image_dir = Path(self.image_dir) if self.image_dir else root / "train_images"
        items, seen = [], {}
        for n, r in enumerate(rows, 1):
            lines = r["text"].split("\n")
            if len(lines) != 3 or not lines[1].startswith(OCR_PREFIX):
                raise BenchmarkDataError(f"{qfile}:{n}: not a TextVQA prompt (question, '{OCR_PREFIX}...', "
                                         "instruction lines)")
            record = lookup.get((r["question_id"], lines[0].lower()))
            if lookup and record is None:
                raise BenchmarkDataError(f"{qfile}:{n}: no answers in {self.annotation_file} for image "
                                         f"{r['question_id']} question {lines[0]!r} (eval_textvqa.py: KeyError)")
            k = seen[r["question_id"]] = seen.get(r["question_id"], -1) + 1
            text = r["text"] if self.use_ocr else f"{lines[0]}\n{lines[2]}"
            items.append(EvalItem(
                question_id=str(record["question_id"]) if record else f"{r['question_id']}/{k}",
                prompt=prompt_with_image(text), images=(str(image_dir / r["image"]),), target=self._target(record),
                meta={"image_id": r["question_id"], "llava_id": r["question_id"]}))
        return items

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        notes: list[str] = []
        if any(it.target is None for it in items):
            notes.append(f"no answers ({self.annotation_file} absent, or a test split): nothing to score locally")
            return self._result({"accuracy": None}, {}, notes, len(items))
        scored, texts = gather_predictions(items, predictions, notes, self.missing_answers, "eval_textvqa.py")
        per_sample, scores = {}, []
        odd = sum(1 for it in scored if len(it.target["answers"]) != 10)
        if odd:
            notes.append(f"{odd} questions do not have 10 answers (m4c asserts 10); scored leave-one-out over "
                         "the answers present, 0 when there are none")
        for it, text in zip(scored, texts):
            s = textvqa_accuracy(text, it.target["answers"])
            scores.append(s)
            per_sample[it.question_id] = {"score": s, "answer": evalai_normalize(text)}
        acc = 100.0 * (sum(scores) / len(scores)) if scores else None  # m4c: mean, then x100 when printed
        if not scores:
            notes.append("no items to score; accuracy is None (m4c divides by zero)")
        return self._result({"accuracy": acc, "use_ocr": self.use_ocr}, per_sample, notes, len(items))
