"""POPE on COCO val2014 (adversarial / popular / random), scored like LLaVA's ``llava/eval/eval_pope.py``.

Expected layout under ``data`` (POPE's ``output/coco`` files; LLaVA's ``.../eval/pope``)::

    coco/coco_pope_<split>.json   (or directly under data/) JSON lines:
                                  {"question_id", "image", "text": "Is there a ... in the image?", "label": "yes"|"no"}
    val2014/<image>               COCO val2014 images

Prompt: ``<image>\\n{text}\\nAnswer the question using a single word or phrase.`` Metrics per split:
accuracy, precision, recall, F1, yes-ratio (percent) and TP/FP/TN/FN; headline ``f1`` = mean F1 over the
splits present (the convention of LLaVA-1.5's table), ``accuracy`` = mean accuracy over splits.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import read_jsonl, require_keys
from ..scorers.yesno import pope_metrics, pope_parse
from ..types import SHORT_ANSWER, Benchmark, BenchmarkDataError, EvalItem, ScoreResult, gather_predictions, \
    prompt_with_image

POPE_SPLITS = ("adversarial", "popular", "random")


@dataclass
class POPE(Benchmark):
    data: str
    splits: tuple[str, ...] | None = None  # None: every coco_pope_<split>.json found
    image_dir: str | None = None

    name = "pope"
    display_name = "POPE"
    main_metric = "f1"

    def _annotation_files(self) -> dict[str, Path]:
        root = Path(self.data)
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

    def load(self) -> list[EvalItem]:
        image_dir = Path(self.image_dir) if self.image_dir else Path(self.data) / "val2014"
        items = []
        for split, path in self._annotation_files().items():
            seen = set()
            for r in read_jsonl(path):
                require_keys(r, ("question_id", "image", "text"), f"{path} line")
                if r["question_id"] in seen:
                    raise BenchmarkDataError(f"{path}: question_id {r['question_id']} appears twice")
                seen.add(r["question_id"])
                items.append(EvalItem(
                    question_id=f"{split}/{r['question_id']}",
                    prompt=prompt_with_image(f"{r['text']}\n{SHORT_ANSWER}"),
                    images=(str(image_dir / r["image"]),), target=r.get("label"),
                    meta={"split": split, "question_id": r["question_id"], "image": r["image"]}))
        return items

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        notes: list[str] = []
        texts = gather_predictions(items, predictions, notes)
        if any(it.target is None for it in items):
            raise BenchmarkDataError("POPE items without a 'label' cannot be scored")
        per_sample, by_split = {}, {}
        for it, text in zip(items, texts):
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
