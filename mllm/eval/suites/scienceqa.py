"""ScienceQA-IMG (test problems with an image), scored like LLaVA's ``llava/eval/eval_science_qa.py``.

Two layouts under ``data``:

- LLaVA's eval.zip (``playground/data/eval/scienceqa``): ``llava_test_CQM-A.json`` (the prompts LLaVA used,
  with the answer letter as the ``gpt`` turn) + ``images/test/<pid>/image.png``; ``problems.json`` +
  ``pid_splits.json`` when present give the answers, as eval_science_qa.py reads them.
- ScienceQA's own files (its repo's ``data/scienceqa``): ``problems.json``, ``pid_splits.json``,
  ``images/<split>/<pid>/<image>``; the prompt is built as LLaVA's converter did: ``Context: {hint}\\n``
  (only when there is a hint) ``{question}\\nA. {choice}\\nB. ...`` with double spaces collapsed
  (``.replace("  ", " ")``, left where the dataset blanked a name) and stripped.

The model sees ``<image>\\n`` + that text + ``\\nAnswer with the option's letter from the given choices
directly.`` (``--single-pred-prompt``). Headline: ``img_accuracy`` (IMG-Accuracy); ``accuracy`` covers every
item loaded (``image_only=False`` adds the text-only problems). As in eval_science_qa.py, a problem without
an answer is wrong in ``accuracy`` and, since the script gives it the prompt 'Unknown' (no ``<image>``),
leaves IMG-Accuracy's denominator.
"""
from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import read_json, require_keys
from ..llava_files import find_question_file
from ..scorers.mcq import SQA_OPTIONS, sqa_parse, sqa_pred_index
from ..types import LONG_MAX_NEW_TOKENS, MCQ_ANSWER, Benchmark, BenchmarkDataError, EvalItem, ScoreResult, \
    gather_predictions, prompt_with_image, ratio


def llava_sqa_text(problem: dict) -> str:
    """The human turn of LLaVA's ``llava_test_CQM-A.json`` for a ScienceQA problem (without ``<image>``)."""
    text = f"Context: {problem['hint']}\n" if problem.get("hint") else ""
    text += problem["question"] + "".join(f"\n{string.ascii_uppercase[i]}. {c}"
                                          for i, c in enumerate(problem["choices"]))
    return text.replace("  ", " ").strip()


def _option_count(text: str) -> int:
    """How many options (``A. ``, ``B. ``... lines, in order, from the last ``A. `` line) a prompt lists; an
    option may span lines ("See you soon,\nJanet")."""
    lines = text.split("\n")
    starts = [i for i, ln in enumerate(lines) if ln.startswith("A. ")]
    n = 0
    for ln in lines[starts[-1]:] if starts else []:
        if n < len(SQA_OPTIONS) and ln.startswith(f"{SQA_OPTIONS[n]}. "):
            n += 1
    return n


@dataclass
class ScienceQA(Benchmark):
    data: str
    split: str = "test"
    image_only: bool = True
    image_dir: str | None = None

    name = "sqa"
    display_name = "ScienceQA-IMG"
    main_metric = "img_accuracy"

    def _official(self, root: Path) -> tuple[dict, list] | None:
        """(problems, pids of the split) when problems.json and pid_splits.json are there."""
        if not ((root / "problems.json").is_file() and (root / "pid_splits.json").is_file()):
            return None
        problems, splits = read_json(root / "problems.json"), read_json(root / "pid_splits.json")
        if self.split not in splits:
            raise BenchmarkDataError(f"{root / 'pid_splits.json'} has no split {self.split!r} "
                                     f"(has {sorted(splits)})")
        return problems, splits[self.split]

    def _item(self, pid: str, text: str, image: str | None, answer: int, n_choices: int) -> EvalItem:
        text = f"{text}\n{MCQ_ANSWER}"
        return EvalItem(question_id=str(pid), prompt=prompt_with_image(text) if image else text,
                        images=(image,) if image else (), max_new_tokens=LONG_MAX_NEW_TOKENS,
                        target={"answer": answer, "n_choices": n_choices}, meta={"has_image": bool(image)})

    def load(self) -> list[EvalItem]:
        qfile = find_question_file(self.data, self.name)
        if qfile is not None:
            return self._load_llava(qfile)
        root = Path(self.data)
        official = self._official(root)
        if official is None:
            raise BenchmarkDataError(f"missing file: {root / 'problems.json'} (or {root / 'pid_splits.json'}); "
                                     f"LLaVA's layout has {root / 'llava_test_CQM-A.json'} instead")
        problems, pids = official
        image_dir = Path(self.image_dir) if self.image_dir else root / "images" / self.split
        items = []
        for pid in pids:
            if pid not in problems:
                raise BenchmarkDataError(f"{root / 'problems.json'}: no problem {pid} listed in split {self.split}")
            p = problems[pid]
            require_keys(p, ("question", "choices", "answer"), f"problems.json {pid}")
            if not 1 <= len(p["choices"]) <= len(SQA_OPTIONS):
                raise BenchmarkDataError(f"problems.json {pid}: {len(p['choices'])} choices (LLaVA handles 1-5)")
            if self.image_only and not p.get("image"):
                continue
            image = str(image_dir / str(pid) / p["image"]) if p.get("image") else None
            items.append(self._item(pid, llava_sqa_text(p), image, int(p["answer"]), len(p["choices"])))
        return items

    def _load_llava(self, qfile: Path) -> list[EvalItem]:
        rows = read_json(qfile)
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and "conversations" in r
                                                             and "id" in r for r in rows):
            raise BenchmarkDataError(f"{qfile}: expected LLaVA's ScienceQA list of {{id, conversations}} records")
        root = qfile.parent
        official = self._official(root)
        problems = official[0] if official else {}
        image_dir = Path(self.image_dir) if self.image_dir else root / "images" / self.split
        items = []
        for r in rows:
            pid = str(r["id"])
            text = r["conversations"][0]["value"].replace("<image>", "").strip()
            if self.image_only and "image" not in r:
                continue
            if pid in problems:  # eval_science_qa.py's source of truth
                answer, n_choices = int(problems[pid]["answer"]), len(problems[pid]["choices"])
            else:
                letter = r["conversations"][1]["value"].strip() if len(r["conversations"]) > 1 else ""
                n_choices = _option_count(text)
                if letter not in SQA_OPTIONS[:n_choices]:
                    raise BenchmarkDataError(f"{qfile}: problem {pid}: answer {letter!r} is not one of its "
                                             f"{n_choices} options (and no problems.json to read it from)")
                answer = SQA_OPTIONS.index(letter)
            image = str(image_dir / r["image"]) if "image" in r else None
            items.append(self._item(pid, text, image, answer, n_choices))
        return items

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        notes: list[str] = []
        _, texts = gather_predictions(items, predictions, notes, "wrong", "eval_science_qa.py")
        per_sample = {}
        correct = img_correct = img_total = unanswered_img = 0
        for it, text in zip(items, texts):
            answered = predictions.get(it.question_id) is not None
            letter = sqa_parse(text) if answered else "FAILED"
            ok = sqa_pred_index(letter, it.target["n_choices"]) == it.target["answer"]
            correct += ok
            if it.meta["has_image"] and answered:
                img_total += 1
                img_correct += ok
            unanswered_img += it.meta["has_image"] and not answered
            per_sample[it.question_id] = {"score": float(ok), "parsed": letter}
        if unanswered_img:
            notes.append(f"{unanswered_img} image problems have no answer: eval_science_qa.py gives a missing answer "
                         "the prompt 'Unknown' (no <image>), so they count as wrong in accuracy and are left out "
                         "of IMG-Accuracy's denominator; reproduced here")
        acc = ratio(correct, len(items), "ScienceQA accuracy", notes, None)
        img = ratio(img_correct, img_total, "ScienceQA IMG-Accuracy", notes, None)
        metrics = {"img_accuracy": None if img is None else img * 100, "accuracy": None if acc is None else acc * 100,
                   "img_n": img_total}
        return self._result(metrics, per_sample, notes, len(items))
