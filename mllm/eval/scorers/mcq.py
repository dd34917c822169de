"""Multiple-choice answer extraction, as each benchmark's official code does it.

- ScienceQA: LLaVA's ``llava/eval/eval_science_qa.py`` (exact letter; ``"X. "`` prefix; one match of the
  regex ``The answer is ([A-Z]).`` whose ``.`` is any character; else FAILED).
- MMBench: VLMEvalKit's exact-matching stage ``can_infer`` (``vlmeval/utils/matching_util.py``, snapshot
  e8e78f0), with ``VERBOSE`` unset; circular evaluation as ``mcq_circular_eval`` without a judge model.
- SEED-Bench: LLaVA's ``scripts/convert_seed_for_submission.py``: ``text == answer``, nothing else.
"""
from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence

SQA_OPTIONS = ("A", "B", "C", "D", "E")
_SQA_PATTERN = re.compile(r"The answer is ([A-Z]).")


def sqa_parse(text: str) -> str:
    """The letter ``eval_science_qa.py`` extracts, or "FAILED"."""
    if text in SQA_OPTIONS:
        return text
    if len(text) >= 3 and text[0] in SQA_OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _SQA_PATTERN.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def sqa_pred_index(letter: str, n_choices: int) -> int:
    """``get_pred_idx``: the option index, or -1 when the letter is not among the first ``n_choices``."""
    return SQA_OPTIONS.index(letter) if letter in SQA_OPTIONS[:n_choices] else -1


_REJECT = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
           "I'm sorry, but without the image provided", "Cannot determine the answer")
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def _can_infer_option(answer: str, choices: Mapping[str, str]):
    if "Failed to obtain answer via API" in answer:
        return False
    for err in _REJECT:
        if err in answer:
            return "Z"
    mod = answer
    for c in ".()[],:;!*#{}":
        mod = mod.replace(c, " ")
    splits = [x.strip() for x in mod.split()]
    count = sum(1 for c in choices if c in splits)
    if count == 1:
        for ch in choices:
            if ch in splits and splits.index(ch) > len(splits) - 5:
                return ch
    elif count == 0 and sum(1 for c in ("Z", "") if c in splits) == 1:
        return "Z"
    match = _VERBOSE_ANSWER.search(answer or "")
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return False


def _can_infer_text(answer: str, choices: Mapping[str, str]):
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return False
    for k in choices:
        if k not in string.ascii_uppercase:
            raise ValueError(f"choice label {k!r} is not an uppercase letter")
    cands = [k for k, v in choices.items() if str(v).lower() in answer]
    return cands[0] if len(cands) == 1 else False


def can_infer(answer, choices: Mapping[str, str]):
    """The option letter VLMEvalKit's exact matching infers from ``answer`` ('Z' = refusal), or False."""
    answer = str(answer)
    return _can_infer_option(answer, choices) or _can_infer_text(answer, choices)


def circular_hits(rows: Sequence[dict]) -> dict[int, int]:
    """Circular evaluation without a judge: group rows by ``g_index``; a group is a hit when every rotation's
    inferred letter equals its ground truth. Rows need ``g_index``, ``gt``, ``prediction``, ``choices``."""
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["g_index"], []).append(r)
    return {g: int(all(can_infer(r["prediction"], r["choices"]) == r["gt"] for r in rs))
            for g, rs in groups.items()}


def rotate_options(options: Sequence[str], answer: str | None, k: int) -> tuple[list[str], str | None]:
    """Options shifted left by ``k`` (LLaVA's ``--all-rounds``) and the letter the answer moves to."""
    n = len(options)
    rotated = list(options[k:]) + list(options[:k])
    if answer is None or k == 0:
        return rotated, answer
    idx = string.ascii_uppercase.index(answer)
    return rotated, string.ascii_uppercase[(idx - k) % n]
