"""MME, scored like the official ``eval_tool/calculation.py`` after LLaVA's ``convert_answer_to_mme.py``.

Expected layout: ``data`` is ``MME_Benchmark_release_version`` (or its parent, or a folder holding
``MME_Benchmark``), with one folder per subtask in either of the two official forms::

    <subtask>/images/<name>.<ext> + <subtask>/questions_answers_YN/<name>.txt
    <subtask>/<name>.<ext>        + <subtask>/<name>.txt
    each txt: one "question<TAB>Yes|No" line per question (two per image)

Prompt (LLaVA's ``llava_mme.jsonl``): the question without " Please answer yes or no." plus the short-answer
suffix (``llava_prompt=False`` keeps the original question). Metrics: per subtask acc, acc+ (both questions
of an image right, lines paired in file order as calculation.py does) and score = acc + acc+ (percent);
``perception`` (10 subtasks, max 2000; what LLaVA reports), ``cognition`` (4, max 800) and their sum.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..scorers.yesno import MME_COGNITION, MME_PERCEPTION, mme_parse, mme_subtask, mme_totals
from ..types import SHORT_ANSWER, Benchmark, BenchmarkDataError, EvalItem, ScoreResult, gather_predictions, \
    prompt_with_image

_IMAGE_EXTS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")
YES_NO_INSTRUCTION = "Please answer yes or no."


def _find_root(data: Path) -> Path:
    known = set(MME_PERCEPTION + MME_COGNITION)
    for cand in (data, data / "MME_Benchmark_release_version", data / "MME_Benchmark",
                 data / "MME_Benchmark_release_version" / "MME_Benchmark"):
        if cand.is_dir() and any((cand / k).is_dir() for k in known):
            return cand
    raise BenchmarkDataError(f"no MME subtask folders (e.g. {data / 'existence'}) under {data}")


def _image_for(stem: str, image_dir: Path, txt: Path) -> Path:
    for ext in _IMAGE_EXTS:
        p = image_dir / f"{stem}{ext}"
        if p.exists():
            return p
    raise BenchmarkDataError(f"{txt}: no image {stem}.* in {image_dir}")


@dataclass
class MME(Benchmark):
    data: str
    llava_prompt: bool = True

    name = "mme"
    display_name = "MME"
    main_metric = "perception"

    def _prompt(self, question: str) -> str:
        if not self.llava_prompt:
            return prompt_with_image(question)
        q = question.replace(YES_NO_INSTRUCTION, "").strip()
        return prompt_with_image(f"{q}\n{SHORT_ANSWER}")

    def load(self) -> list[EvalItem]:
        root = _find_root(Path(self.data))
        items = []
        for task_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (task_dir / "images").is_dir():
                image_dir, qa_dir = task_dir / "images", task_dir / "questions_answers_YN"
            else:
                image_dir = qa_dir = task_dir
            if not qa_dir.is_dir():
                raise BenchmarkDataError(f"{qa_dir} is missing (needed next to {image_dir})")
            for txt in sorted(qa_dir.glob("*.txt")):
                image = _image_for(txt.stem, image_dir, txt)
                lines = [ln for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
                for k, line in enumerate(lines):
                    parts = line.strip().split("\t")
                    if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
                        raise BenchmarkDataError(f"{txt}:{k + 1}: expected 'question<TAB>Yes|No', got {line!r}")
                    question, answer = parts
                    items.append(EvalItem(
                        question_id=f"{task_dir.name}/{image.name}/{k}", prompt=self._prompt(question),
                        images=(str(image),), target=answer.strip().lower(),
                        meta={"category": task_dir.name, "image": image.name, "question": question,
                              "pair": k // 2}))
        if not items:
            raise BenchmarkDataError(f"no MME questions found under {root}")
        return items

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        notes: list[str] = []
        texts = gather_predictions(items, predictions, notes)
        sanitized = sum(1 for t in texts if any(c in t for c in "\t\r\n"))
        if sanitized:
            notes.append(f"{sanitized} answers contain tabs/newlines, which break the official results file; "
                         "they were replaced by spaces before parsing")
        groups: dict[str, dict[tuple, list]] = {}
        per_sample = {}
        for it, text in zip(items, texts):
            parsed = mme_parse(text.replace("\t", " ").replace("\r", " ").replace("\n", " "))
            key = (it.meta["image"], it.meta["pair"])
            groups.setdefault(it.meta["category"], {}).setdefault(key, []).append((it.target, parsed))
            per_sample[it.question_id] = {"score": float(parsed == it.target), "parsed": parsed}
        subtasks = {task: mme_subtask(list(g.values()), task, notes) for task, g in sorted(groups.items())}
        totals = mme_totals({t: m["score"] for t, m in subtasks.items()}, notes)
        return self._result({**totals, "subtasks": subtasks}, per_sample, notes, len(items))
