"""POPE on COCO val2014 (adversarial / popular / random), scored like LLaVA's ``llava/eval/eval_pope.py``.

Two layouts under ``data``:

- LLaVA's eval.zip (``playground/data/eval/pope``): ``llava_pope_test.jsonl`` (the prompts LLaVA used) +
  ``coco/coco_pope_<split>.json`` (the labels) + ``val2014/``. As eval_pope.py does, the questions of each
  category are paired with the annotation file's lines by position; we check each pair's image and question
  and refuse a mismatch. LLaVA's file was built from POPE's first revision (AoiDragon/POPE
  e3e39262c85a6a83f26cf5094022a782cb0df58d, random split 2,910 questions); the 2023-10 revision (3,000
  random questions) does not pair.
- POPE's own files: ``coco/coco_pope_<split>.json`` (or directly under ``data``), JSON lines
  ``{"question_id", "image", "text", "label"}``, + ``val2014/``; the prompt is built as LLaVA's file has it:
  ``<image>\\n{text}\\nAnswer the question using a single word or phrase.``

Metrics per split: accuracy, precision, recall, F1, yes-ratio (percent) and TP/FP/TN/FN; headline ``f1`` =
mean F1 over the splits present (LLaVA-1.5's table), ``accuracy`` = mean accuracy over splits. A question
without an answer is left out, as eval_pope.py computes over the answers it is given.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import read_jsonl, require_keys
from ..llava_files import check_categories, find_question_file, read_questions
from ..scorers.yesno import pope_metrics, pope_parse
from ..types import SHORT_ANSWER, Benchmark, BenchmarkDataError, EvalItem, ScoreResult, gather_predictions, \
    prompt_with_image

POPE_SPLITS = ("adversarial", "popular", "random")
# llava_pope_test.jsonl numbers each split's questions from these offsets (adversarial 1.., random 10000001..)
LLAVA_ID_OFFSET = {"adversarial": 0, "random": 10_000_000, "popular": 20_000_000}
FIRST_REVISION = "AoiDragon/POPE e3e39262c85a6a83f26cf5094022a782cb0df58d"


@dataclass
class POPE(Benchmark):
    data: str
    splits: tuple[str, ...] | None = None  # None: every split found
    image_dir: str | None = None

    name = "pope"
    display_name = "POPE"
    main_metric = "f1"
    missing_answers = "excluded"

    def _annotation_files(self, root: Path) -> dict[str, Path]:
        ann_dir = root / "coco" if (root / "coco").is_dir() else root
        found = {p.name[len("coco_pope_"):-len(".json")]: p for p in sorted(ann_dir.glob("coco_pope_*.json"))}
        if self.splits is None:
            if not found:
                raise BenchmarkDataError(f"no coco_pope_<split>.json files in {ann_dir}")
            return found
        missing = [s for s in self.splits if s not in found]
        if missing:
            raise BenchmarkDataError(f"POPE split(s) {missing} not found in {ann_dir} (found: {sorted(found)})")
        return {s: found[s] for s in self.splits}

    def _item(self, split: str, ann: dict, prompt: str, image_dir: Path, llava_id) -> EvalItem:
        return EvalItem(question_id=f"{split}/{ann['question_id']}", prompt=prompt,
                        images=(str(image_dir / ann["image"]),), target=ann.get("label"),
                        meta={"split": split, "question_id": ann["question_id"], "image": ann["image"],
                              "llava_id": llava_id})

    @staticmethod
    def _read_annotations(path: Path) -> list[dict]:
        rows, seen = read_jsonl(path), set()
        for r in rows:
            require_keys(r, ("question_id", "image", "text"), f"{path} line")
            if r["question_id"] in seen:
                raise BenchmarkDataError(f"{path}: question_id {r['question_id']} appears twice")
            seen.add(r["question_id"])
        return rows

    def load(self) -> list[EvalItem]:
        qfile = find_question_file(self.data, self.name)
        if qfile is not None:
            return self._load_llava(qfile)
        root = Path(self.data)
        image_dir = Path(self.image_dir) if self.image_dir else root / "val2014"
        items = []
        for split, path in self._annotation_files(root).items():
            for r in self._read_annotations(path):
                llava_id = LLAVA_ID_OFFSET.get(split, 0) + r["question_id"] if isinstance(r["question_id"], int) \
                    else r["question_id"]
                items.append(self._item(split, r, prompt_with_image(f"{r['text']}\n{SHORT_ANSWER}"), image_dir,
                                        llava_id))
        return items

    def _load_llava(self, qfile: Path) -> list[EvalItem]:
        """LLaVA's prompts, the annotation files' labels, paired by position within each category."""
        rows = read_questions(qfile, ("question_id", "image", "text", "category"), "POPE")
        categories = check_categories(rows, qfile, POPE_SPLITS, "POPE")
        root = qfile.parent
        image_dir = Path(self.image_dir) if self.image_dir else root / "val2014"
        wanted = self.splits or tuple(categories)
        files = self._annotation_files(root)
        items = []
        for split in wanted:
            questions = [r for r in rows if r["category"] == split]
            if split not in files:
                raise BenchmarkDataError(f"no labels for POPE {split}: coco/coco_pope_{split}.json is missing "
                                         f"next to {qfile}")
            labels = self._read_annotations(files[split])
            if len(labels) != len(questions):
                raise BenchmarkDataError(
                    f"{files[split]} has {len(labels)} questions but {qfile.name} has {len(questions)} '{split}' "
                    f"questions; LLaVA pairs them by position: use POPE's first revision ({FIRST_REVISION})")
            for n, (q, a) in enumerate(zip(questions, labels), 1):
                if q["image"] != a["image"] or not str(q["text"]).startswith(a["text"]):
                    raise BenchmarkDataError(
                        f"{files[split]} line {n} ({a['image']}: {a['text']!r}) does not match {qfile.name}'s "
                        f"{split} question {n} ({q['image']}: {q['text'].splitlines()[0]!r}); "
                        f"LLaVA's file pairs with POPE's first revision ({FIRST_REVISION})")
                items.append(self._item(split, a, prompt_with_image(q["text"]), image_dir, q["question_id"]))
        return items

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        notes: list[str] = []
        if any(it.target is None for it in items):
            raise BenchmarkDataError("POPE items without a 'label' cannot be scored")
        kept, texts = gather_predictions(items, predictions, notes, self.missing_answers, "eval_pope.py")
        if len(kept) < len(items):
            notes.append("eval_pope.py pairs answers with labels by position, so with answers missing it would "
                         "misalign every later answer of the split; here each answer meets its own label")
        per_sample, by_split = {}, {}
        for it, text in zip(kept, texts):
            parsed = pope_parse(text)
            by_split.setdefault(it.meta["split"], ([], []))
            by_split[it.meta["split"]][0].append(parsed)
            by_split[it.meta["split"]][1].append(it.target)
            per_sample[it.question_id] = {"score": float(parsed == ("no" if it.target == "no" else "yes")),
                                          "parsed": parsed}
        splits = {s: pope_metrics(p, lab, f"POPE {s}", notes) for s, (p, lab) in by_split.items()}
        mean = (lambda key: None if not splits or any(m[key] is None for m in splits.values())
                else sum(m[key] for m in splits.values()) / len(splits))
        metrics = {"f1": mean("f1"), "accuracy": mean("accuracy"), "splits": splits}
        return self._result(metrics, per_sample, notes, len(items))
