"""Export held-out synthetic QA in the standard POPE, MME, VQAv2, GQA, TextVQA and ScienceQA layouts, so the
real readers and official-equivalent scorers run end to end on data small enough for CI.

Input: dicts (or objects with the same attributes) ``{"image": path, "question": str, "answer": str,
"kind": "yes_no"|"short"}`` plus optional ``question_id``, ``mme_subtask`` (default ``existence``),
``pope_split`` (default ``random``) and ``choices`` (the answer set, for ScienceQA) — the records of the
quickstart's ``heldout.json`` qualify (other keys are ignored). Relative image paths resolve against
``image_root``. Images are copied under unique names (converted to JPEG where the reader looks up ``.jpg``:
GQA, TextVQA).

- POPE: yes/no questions -> ``pope/coco/coco_pope_<split>.json`` + ``pope/val2014/``.
- MME: yes/no questions, paired per image in input order (MME scores an image by its *pair* of questions,
  ideally one "Yes" and one "No"; an image's odd last question is dropped and counted) ->
  ``mme/<subtask>/images`` + ``questions_answers_YN``. Needs images with >= 2 yes/no questions.
- VQAv2: every question, its EvalAI-normalised answer as all ten human answers (VQAv2 stores answers
  normalised; vqaEval.py compares unanimous humans without normalising) -> ``vqav2/`` val2014 files.
- GQA: every question, balanced, its answer lower-cased (GQA's answers are) -> ``gqa/testdev_balanced_questions.json``
  + ``gqa/images/<imageId>.jpg``.
- TextVQA: every question with its answer as all ten human answers and no OCR tokens ->
  ``textvqa/TextVQA_0.5.1_val.json`` + ``textvqa/train_images/<image_id>.jpg``.
- ScienceQA: questions with ``choices`` holding their answer, as test problems with an image ->
  ``sqa/problems.json`` + ``pid_splits.json`` + ``images/test/<pid>/image.png``.

``layout="llava"`` puts each format where LLaVA-1.5's ``playground/data/eval`` keeps it
(``mllm.data.llava_layout.EVAL_PIECES``: ``MME/MME_Benchmark_release_version``, ``gqa/data``, ``scienceqa``, ...)
instead of ``<out_dir>/<format>``.

A format that ends up with no question (e.g. MME when every image has a single yes/no question) is left out
of the returned dict, with a logged warning saying why.
"""
from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..data.llava_layout import EVAL_PIECES
from .scorers.vqa import evalai_normalize
from .suites import load_benchmark
from .types import Benchmark

VQA_SUBTYPE = "val2014"
MARKER = ".synthetic_export"
FORMATS = ("pope", "mme", "vqav2", "gqa", "textvqa", "sqa")
log = logging.getLogger(__name__)


@dataclass
class ExportedBenchmark:
    """Where one format was written and how to open it: ``load_benchmark(name, data, **options)``."""

    name: str
    data: Path
    options: dict = field(default_factory=dict)
    n_questions: int = 0
    dropped: int = 0  # questions the format cannot hold (MME: an image's unpaired yes/no question)
    reason: str = ""  # why nothing was written, when n_questions == 0

    def build(self) -> Benchmark:
        return load_benchmark(self.name, self.data, **self.options)


def _as_dict(sample) -> dict:
    if isinstance(sample, dict):
        return sample
    return {k: getattr(sample, k) for k in ("image", "question", "answer", "kind", "question_id", "mme_subtask",
                                             "pope_split", "choices") if hasattr(sample, k)}


def _normalize(samples: Iterable, image_root: str | Path | None) -> list[dict]:
    out = []
    for i, s in enumerate(map(_as_dict, samples)):
        missing = [k for k in ("image", "question", "answer", "kind") if not s.get(k)]
        if missing:
            raise ValueError(f"sample {i}: missing {missing}")
        if s["kind"] not in ("yes_no", "short"):
            raise ValueError(f"sample {i}: kind must be 'yes_no' or 'short', got {s['kind']!r}")
        image = Path(s["image"])
        if not image.is_absolute() and image_root is not None:
            image = Path(image_root) / image
        if not image.is_file():
            raise ValueError(f"sample {i}: image not found: {image}")
        answer = str(s["answer"]).strip()
        if s["kind"] == "yes_no" and answer.lower() not in ("yes", "no"):
            raise ValueError(f"sample {i}: yes_no answer must be yes/no, got {answer!r}")
        if any(c in s["question"] for c in "\t\n"):
            raise ValueError(f"sample {i}: question contains a tab or newline (MME's txt format cannot hold it)")
        out.append({"image": image.resolve(), "question": s["question"], "answer": answer, "kind": s["kind"],
                    "question_id": str(s.get("question_id") or i), "mme_subtask": s.get("mme_subtask") or "existence",
                    "pope_split": s.get("pope_split") or "random", "choices": [str(c) for c in s.get("choices") or []]})
    if not out:
        raise ValueError("no samples to export")
    return out


def export_synthetic(samples: Iterable, out_dir: str | Path, image_root: str | Path | None = None,
                     formats: tuple[str, ...] = ("pope", "mme", "vqav2"),
                     layout: str = "flat") -> dict[str, ExportedBenchmark]:
    """Write the requested formats under ``out_dir/<format>/`` (``layout="flat"``) or where LLaVA's eval folder
    keeps them (``layout="llava"``); returns name -> ExportedBenchmark."""
    rows = _normalize(samples, image_root)
    out = Path(out_dir)
    image_ids = {}
    for r in rows:  # one numeric id per distinct source image, in first-seen order
        image_ids.setdefault(r["image"], len(image_ids) + 1)
    writers = {"pope": _write_pope, "mme": _write_mme, "vqav2": _write_vqav2, "gqa": _write_gqa,
               "textvqa": _write_textvqa, "sqa": _write_sqa}
    unknown = [f for f in formats if f not in writers]
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; choose from {sorted(writers)}")
    if layout not in ("flat", "llava"):
        raise ValueError(f"layout must be 'flat' or 'llava', got {layout!r}")
    exported = {}
    for f in formats:
        folder = out / (EVAL_PIECES[f].data if layout == "llava" else f)
        _fresh_dir(folder)
        result = writers[f](rows, folder, image_ids)
        if result.n_questions:
            exported[f] = result
        else:
            log.warning("synthetic export: no %s benchmark written (%s)", f, result.reason)
    return exported


def _fresh_dir(path: Path) -> None:
    """Empty a folder written by an earlier export (recognised by its marker file) so no stale split or
    subtask survives; refuse to write into a non-empty folder we did not create."""
    marker = path / MARKER
    if path.exists() and any(path.iterdir()):
        if not marker.exists():
            raise ValueError(f"{path} exists and was not written by export_synthetic; choose another out_dir")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by mllm.eval.export_synthetic; the folder is replaced on the next export\n")


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists() or dst.stat().st_size != src.stat().st_size:
        shutil.copyfile(src, dst)


def _save_jpeg(src: Path, dst: Path) -> None:
    """For readers that look up ``<id>.jpg`` (GQA, TextVQA): the image re-encoded as JPEG (quality 95)."""
    from PIL import Image

    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix.lower() in (".jpg", ".jpeg"):
        _copy(src, dst)
        return
    with Image.open(src) as im:
        im.convert("RGB").save(dst, format="JPEG", quality=95)


def _write_pope(rows, root: Path, image_ids) -> ExportedBenchmark:
    yes_no = [r for r in rows if r["kind"] == "yes_no"]
    if not yes_no:
        return ExportedBenchmark("pope", root, reason="no yes_no samples")
    by_split: dict[str, list[dict]] = {}
    for r in yes_no:
        name = f"synthetic_{image_ids[r['image']]:06d}{r['image'].suffix}"
        _copy(r["image"], root / "val2014" / name)
        lines = by_split.setdefault(r["pope_split"], [])
        lines.append({"question_id": len(lines) + 1, "image": name, "text": r["question"],
                      "label": r["answer"].lower()})
    (root / "coco").mkdir(parents=True, exist_ok=True)
    for split, lines in by_split.items():
        with open(root / "coco" / f"coco_pope_{split}.json", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
    return ExportedBenchmark("pope", root, {}, len(yes_no))


def _write_mme(rows, root: Path, image_ids) -> ExportedBenchmark:
    per_image: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["kind"] == "yes_no":
            per_image.setdefault((r["mme_subtask"], r["image"]), []).append(r)
    written, dropped = 0, 0
    for (category, image), qs in per_image.items():
        keep = qs[: len(qs) // 2 * 2]
        dropped += len(qs) - len(keep)
        if not keep:
            continue
        stem = f"synthetic_{image_ids[image]:06d}"
        _copy(image, root / category / "images" / f"{stem}{image.suffix}")
        txt = root / category / "questions_answers_YN" / f"{stem}.txt"
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt.write_text("".join(f"{q['question']}\t{q['answer'].capitalize()}\n" for q in keep), encoding="utf-8")
        written += len(keep)
    if dropped:
        log.warning("synthetic export: MME dropped %d yes/no questions left without a pair on their image", dropped)
    reason = "" if written else f"MME needs images with two yes_no questions; {dropped} unpaired ones"
    return ExportedBenchmark("mme", root, {}, written, dropped, reason)


def _write_vqav2(rows, root: Path, image_ids) -> ExportedBenchmark:
    questions, annotations = [], []
    for n, r in enumerate(rows, 1):
        image_id = image_ids[r["image"]]
        _copy(r["image"], root / VQA_SUBTYPE / f"COCO_{VQA_SUBTYPE}_{image_id:012d}{r['image'].suffix}")
        questions.append({"image_id": image_id, "question": r["question"], "question_id": n})
        answer = evalai_normalize(r["answer"])  # VQAv2's human answers are stored normalised (lower case, digits)
        kind = "yes/no" if r["kind"] == "yes_no" else ("number" if answer.isdigit() else "other")
        annotations.append({
            "question_id": n, "image_id": image_id, "answer_type": kind, "multiple_choice_answer": answer,
            "question_type": " ".join(r["question"].lower().split()[:2]),
            "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k} for k in range(1, 11)],
            "synthetic_question_id": r["question_id"]})
    common = {"data_type": "mscoco", "data_subtype": VQA_SUBTYPE, "license": {}, "info": {"synthetic": True}}
    root.mkdir(parents=True, exist_ok=True)
    (root / f"v2_OpenEnded_mscoco_{VQA_SUBTYPE}_questions.json").write_text(
        json.dumps({**common, "task_type": "Open-Ended", "questions": questions}), encoding="utf-8")
    (root / f"v2_mscoco_{VQA_SUBTYPE}_annotations.json").write_text(
        json.dumps({**common, "annotations": annotations}), encoding="utf-8")
    return ExportedBenchmark("vqav2", root, {"split": VQA_SUBTYPE}, len(rows))



def _write_gqa(rows, root: Path, image_ids) -> ExportedBenchmark:
    questions = {}
    for n, r in enumerate(rows, 1):
        image_id = f"s{image_ids[r['image']]}"
        _save_jpeg(r["image"], root / "images" / f"{image_id}.jpg")
        structural = "verify" if r["kind"] == "yes_no" else "query"
        questions[str(n)] = {"imageId": image_id, "question": r["question"], "answer": r["answer"].lower(),
                             "fullAnswer": r["answer"], "isBalanced": True,
                             "types": {"structural": structural, "semantic": "attr", "detailed": "synthetic"},
                             "groups": {"global": None, "local": None}, "synthetic_question_id": r["question_id"]}
    (root / "testdev_balanced_questions.json").write_text(json.dumps(questions), encoding="utf-8")
    return ExportedBenchmark("gqa", root, {}, len(rows))


def _write_textvqa(rows, root: Path, image_ids) -> ExportedBenchmark:
    data = []
    for n, r in enumerate(rows, 1):
        image_id = f"{image_ids[r['image']]:016x}"  # TextVQA's image ids are 16 hex digits
        _save_jpeg(r["image"], root / "train_images" / f"{image_id}.jpg")
        data.append({"question_id": n, "image_id": image_id, "question": r["question"], "answers": [r["answer"]] * 10,
                     "ocr_tokens": [], "image_classes": [], "set_name": "val",
                     "synthetic_question_id": r["question_id"]})
    (root / "TextVQA_0.5.1_val.json").write_text(
        json.dumps({"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data}),
        encoding="utf-8")
    return ExportedBenchmark("textvqa", root, {}, len(rows))


def _write_sqa(rows, root: Path, image_ids) -> ExportedBenchmark:
    mcq = [r for r in rows if r["answer"].lower() in [c.lower() for c in r["choices"]] and 2 <= len(r["choices"]) <= 5]
    if not mcq:
        return ExportedBenchmark("sqa", root, reason="no samples with 2-5 choices holding their answer")
    problems, pids = {}, []
    for n, r in enumerate(mcq, 1):
        pid = str(n)
        _copy(r["image"], root / "images" / "test" / pid / f"image{r['image'].suffix}")
        answer = [c.lower() for c in r["choices"]].index(r["answer"].lower())
        problems[pid] = {"question": r["question"], "choices": r["choices"], "answer": answer, "hint": "",
                         "image": f"image{r['image'].suffix}", "split": "test", "subject": "synthetic",
                         "synthetic_question_id": r["question_id"]}
        pids.append(pid)
    (root / "problems.json").write_text(json.dumps(problems), encoding="utf-8")
    (root / "pid_splits.json").write_text(json.dumps({"test": pids}), encoding="utf-8")
    return ExportedBenchmark("sqa", root, {}, len(mcq), len(rows) - len(mcq))
