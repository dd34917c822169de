"""VQAv2 (LLaVA-1.5 reports test-dev2015, scored by the EvalAI server).

LLaVA's eval.zip layout (``playground/data/eval/vqav2``: ``llava_vqav2_mscoco_test-dev2015.jsonl``, the
prompts LLaVA used, + ``test2015/``) is read as is, and the upload then lists every question of
``llava_vqav2_mscoco_test2015.jsonl`` (empty answers outside test-dev), as LLaVA's converter writes it.
Otherwise the official download, under ``data``::

    v2_OpenEnded_mscoco_<split>_questions.json   {"data_subtype": ..., "questions": [{question_id, image_id, question}]}
    v2_mscoco_<split>_annotations.json           optional (train/val): {"annotations": [{question_id, answers[10],
                                                 answer_type, question_type, ...}]} -> local scoring
    <image_subtype>/COCO_<image_subtype>_<image_id:012d>.jpg   (test-dev2015 images live in test2015/;
                                                 a .png with the same stem is accepted too)

Prompt: ``<image>\\n{question}\\nAnswer the question using a single word or phrase.`` Submission: EvalAI JSON
``[{"question_id": int, "answer": EvalAI-normalised text}]`` (LLaVA's ``convert_vqav2_for_submission.py``).
Local score (when annotations exist): the EvalAI-normalised answer through ``vqaEval.py``.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import read_json, require_keys, write_json
from ..llava_files import QUESTION_FILES, find_question_file, read_questions
from ..scorers.vqa import evalai_normalize, vqa_eval_accuracy
from ..types import (SHORT_ANSWER, Benchmark, BenchmarkDataError, EvalItem, ScoreResult, gather_predictions,
                     prompt_with_image)


def coco_image(image_dir: Path, subtype: str, image_id: int) -> str:
    """COCO file name; falls back to a .png of the same stem (synthetic exports keep their PNGs)."""
    path = image_dir / f"COCO_{subtype}_{int(image_id):012d}.jpg"
    if not path.exists() and path.with_suffix(".png").exists():
        path = path.with_suffix(".png")
    return str(path)


def score_vqa_style(items: Sequence[EvalItem], predictions: Mapping[str, str], score_fn, split: str):
    """VQAv2 and VizWiz: EvalAI-normalised answers scored by ``score_fn``, or (None, {}, notes) when the split
    has no answers (test splits are scored by the EvalAI server). Returns (metrics, per_sample, notes)."""
    notes: list[str] = []
    _, texts = gather_predictions(items, predictions, notes)
    if any(it.target is None for it in items):
        notes.append(f"no answers for split {split}: scored by the EvalAI server; "
                     "upload the file written by write_submission")
        return None, {}, notes
    metrics, per_sample = vqa_accuracy_report(items, [evalai_normalize(t) for t in texts], score_fn, notes)
    return metrics, per_sample, notes


def vqa_accuracy_report(items: Sequence[EvalItem], answers: Sequence[str], score_fn, notes: list[str]):
    """Per-sample scores and overall / per-answer-type accuracy (percent) for VQA-style targets."""
    per_sample, accs, by_type = {}, [], defaultdict(list)
    for it, ans in zip(items, answers):
        acc = score_fn(ans, it.target["answers"])
        accs.append(acc)
        by_type[it.target.get("answer_type")].append(acc)
        per_sample[it.question_id] = {"score": acc, "answer": ans}
    metrics = {"accuracy": 100 * float(sum(accs)) / len(accs) if accs else None,
               "per_answer_type": {str(k): 100 * float(sum(v)) / len(v) for k, v in by_type.items()}}
    if not accs:
        notes.append("no items to score; accuracy is None (the official code divides by zero)")
    return metrics, per_sample


@dataclass
class VQAv2(Benchmark):
    data: str
    split: str = "test-dev2015"
    image_dir: str | None = None

    name = "vqav2"
    display_name = "VQAv2"
    main_metric = "accuracy"
    server_side = True

    def _files(self):
        root = Path(self.data)
        return (root / f"v2_OpenEnded_mscoco_{self.split}_questions.json",
                root / f"v2_mscoco_{self.split}_annotations.json")

    def load(self) -> list[EvalItem]:
        llava = find_question_file(self.data, self.name)
        if llava is not None:
            image_dir = Path(self.image_dir) if self.image_dir else llava.parent / "test2015"
            return [EvalItem(question_id=str(r["question_id"]), prompt=prompt_with_image(r["text"]),
                             images=(str(image_dir / r["image"]),), target=None,
                             meta={"question_id": r["question_id"], "llava_file": str(llava)})
                    for r in read_questions(llava, benchmark="VQAv2")]
        qfile, afile = self._files()
        qdata = read_json(qfile)
        if not isinstance(qdata, dict) or "questions" not in qdata:
            raise BenchmarkDataError(f"{qfile}: expected an object with a 'questions' list")
        subtype = qdata.get("data_subtype") or self.split
        subtype = "test2015" if subtype == "test-dev2015" else subtype
        image_dir = Path(self.image_dir) if self.image_dir else Path(self.data) / subtype
        anns = None
        if afile.exists():
            adata = read_json(afile)
            anns = {a["question_id"]: a for a in adata.get("annotations", [])}
        items = []
        for q in qdata["questions"]:
            require_keys(q, ("question_id", "image_id", "question"), f"{qfile} question")
            target = None
            if anns is not None:
                a = anns.get(q["question_id"])
                if a is None:
                    raise BenchmarkDataError(f"{afile}: no annotation for question_id {q['question_id']}")
                target = {"answers": a["answers"], "answer_type": a.get("answer_type"),
                          "question_type": a.get("question_type")}
            items.append(EvalItem(
                question_id=str(q["question_id"]),
                prompt=prompt_with_image(f"{q['question']}\n{SHORT_ANSWER}"),
                images=(coco_image(image_dir, subtype, q["image_id"]),),
                target=target, meta={"question_id": q["question_id"], "image_id": q["image_id"]}))
        return items

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        metrics, per_sample, notes = score_vqa_style(items, predictions, vqa_eval_accuracy, self.split)
        if metrics is None:
            return self._result({"accuracy": None}, {}, notes, len(items))
        by_qtype = defaultdict(list)
        for it in items:
            by_qtype[it.target.get("question_type")].append(per_sample[it.question_id]["score"])
        metrics["per_question_type"] = {str(k): 100 * float(sum(v)) / len(v) for k, v in by_qtype.items()}
        return self._result(metrics, per_sample, notes, len(items))

    def write_submission(self, items, predictions, out_dir) -> list[Path]:
        ids = [it.meta["question_id"] for it in items]
        full = Path(items[0].meta["llava_file"]).parent / QUESTION_FILES["vqav2"][1] if items and \
            "llava_file" in items[0].meta else None
        if full is not None and full.is_file():  # LLaVA's upload covers all of test2015
            ids = [r["question_id"] for r in read_questions(full, benchmark="VQAv2")]
        rows = [{"question_id": q,
                 "answer": evalai_normalize(predictions[str(q)]) if str(q) in predictions else ""} for q in ids]
        return [write_json(Path(out_dir) / f"vqav2_{self.split}_submission.json", rows)]
