"""Yes/no scorers: POPE (LLaVA's ``llava/eval/eval_pope.py``) and MME (the official ``eval_tool/calculation.py``).

POPE parsing keeps only the text before the first ``.``, drops commas, splits on single spaces and answers
"no" when a word is exactly ``No``, ``no`` or ``not`` — so "NO", "No!" or "no\\nthere" count as yes.
MME looks at the first four characters of the lower-cased answer: "yes" inside them wins, then "no".
"""
from __future__ import annotations

from collections.abc import Sequence

from ..types import ratio

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def pope_parse(text: str) -> str:
    """'yes' or 'no' as ``eval_pope.py`` reads a model answer."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_metrics(parsed: Sequence[str], labels: Sequence[str], what: str, notes: list[str]) -> dict:
    """Confusion counts and accuracy/precision/recall/F1/yes-ratio in percent (labels: 'no' -> 0, else 1)."""
    preds = [0 if p == "no" else 1 for p in parsed]
    gts = [0 if lab == "no" else 1 for lab in labels]
    tp = sum(1 for p, g in zip(preds, gts) if p == 1 and g == 1)
    fp = sum(1 for p, g in zip(preds, gts) if p == 1 and g == 0)
    tn = sum(1 for p, g in zip(preds, gts) if p == 0 and g == 0)
    fn = sum(1 for p, g in zip(preds, gts) if p == 0 and g == 1)
    precision = ratio(tp, tp + fp, f"{what} precision", notes)
    recall = ratio(tp, tp + fn, f"{what} recall", notes)
    f1 = ratio(2 * precision * recall, precision + recall, f"{what} F1", notes)
    acc = ratio(tp + tn, tp + tn + fp + fn, f"{what} accuracy", notes, None)
    yes_ratio = ratio(preds.count(1), len(preds), f"{what} yes-ratio", notes, None)
    pct = (lambda v: None if v is None else 100 * v)
    return {"accuracy": pct(acc), "precision": pct(precision), "recall": pct(recall), "f1": pct(f1),
            "yes_ratio": pct(yes_ratio), "TP": tp, "FP": fp, "TN": tn, "FN": fn, "n": len(preds)}


def mme_parse(text: str) -> str:
    """'yes', 'no' or 'other' as ``calculation.py`` reads an answer (it sees the line with its newline, so
    the exact-match branch never fires and only the 4-character prefix decides)."""
    pred = (text + "\n").lower()
    if pred in ("yes", "no"):
        return pred
    prefix = pred[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def mme_subtask(groups: Sequence[Sequence[tuple[str, str]]], task: str, notes: list[str]) -> dict:
    """One subtask from its image groups of (gt 'yes'/'no', parsed prediction): acc, acc+ and score.

    acc is over questions, acc+ over images (all of the image's questions right), score = 100*(acc + acc+).
    """
    flat = [pair for group in groups for pair in group]
    odd = sum(1 for g in groups if len(g) != 2)
    if odd:
        notes.append(f"MME {task}: {odd} images do not have exactly 2 questions (the official tool asserts); "
                     "acc+ counts such an image when all its questions are right")
    if flat and all(p == "other" for _, p in flat):
        notes.append(f"MME {task}: no answer parses as yes/no; the official tool raises ValueError (sklearn "
                     "precision on an empty set) — acc and acc+ reported as 0")
    acc = ratio(sum(1 for gt, p in flat if gt == p), len(flat), f"MME {task} acc", notes, None)
    acc_plus = ratio(sum(1 for g in groups if all(gt == p for gt, p in g)), len(groups), f"MME {task} acc+",
                     notes, None)
    if acc is None or acc_plus is None:
        return {"acc": None, "acc_plus": None, "score": None, "other": 0, "n_questions": 0, "n_images": 0}
    score = 0
    score += acc * 100  # same summation order as the official loop (acc, then acc_plus)
    score += acc_plus * 100
    return {"acc": 100 * acc, "acc_plus": 100 * acc_plus, "score": score,
            "other": sum(1 for _, p in flat if p == "other"), "n_questions": len(flat), "n_images": len(groups)}


def mme_totals(task_scores: dict[str, float | None], notes: list[str]) -> dict:
    """Perception (10 subtasks, max 2000) and cognition (4, max 800) sums over the subtasks present."""
    out = {}
    for name, tasks in (("perception", MME_PERCEPTION), ("cognition", MME_COGNITION)):
        present = [t for t in tasks if task_scores.get(t) is not None]
        missing = [t for t in tasks if t not in present]
        if missing and present:
            notes.append(f"MME {name}: subtasks {missing} absent (the official tool stops with FileNotFoundError); "
                         f"the {name} total sums the {len(present)} present")
        elif missing:
            notes.append(f"MME {name}: no subtask present; {name} is None and the total leaves it out")
        total = 0
        for t in present:
            total += task_scores[t]
        out[name] = total if present else None
    extra = sorted(t for t in task_scores if t not in MME_PERCEPTION + MME_COGNITION)
    if extra:
        notes.append(f"MME: subtasks {extra} are not official MME subtasks; scored but in neither total")
    out["total"] = None if out["perception"] is None and out["cognition"] is None else \
        (out["perception"] or 0) + (out["cognition"] or 0)
    return out
