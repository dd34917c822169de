"""GQA: LLaVA's ``scripts/convert_gqa_for_eval.py`` then the official GQA ``eval.py`` (balanced questions).

The conversion is ``text.rstrip('.').lower()``; eval.py scores exact string equality with the gold answer,
averages over questions with ``isBalanced``, splits binary/open by structural type ``query``, and reports
the chi-square answer-distribution distance per global group (divided by 100, lower is better).
Validity/plausibility/consistency/grounding need files absent from testdev and are not computed.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from ..types import ratio


def gqa_convert(text: str) -> str:
    return text.rstrip(".").lower()


def chi_square(gold: dict, predicted: dict, notes: list[str]) -> float | None:
    """eval.py ``chiSquare``: per global group sum((o-e)^2/e) weighted by the group's size."""
    sum_score, sum_overall = 0, 0
    for group in gold:
        score, overall = 0, 0
        for ans in gold[group]:
            e = gold[group][ans]
            o = predicted[group].get(ans, 0)
            score += (float(o - e) ** 2) / e
            overall += gold[group][ans]
        sum_score += score * overall
        sum_overall += overall
    return ratio(float(sum_score), sum_overall, "GQA distribution", notes, None)


def gqa_scores(rows: Sequence[dict], notes: list[str]) -> dict:
    """``rows``: dicts with ``prediction`` (converted), ``answer``, ``structural``, ``semantic``, ``group``,
    ``balanced``. Returns accuracy/binary/open in percent, per-type accuracies and the distribution."""
    acc, binary, open_ = [], [], []
    per_struct, per_sem = defaultdict(list), defaultdict(list)
    gold, pred = defaultdict(lambda: defaultdict(int)), defaultdict(lambda: defaultdict(int))
    for r in rows:
        if not r["balanced"]:
            continue
        score = float(1 if r["prediction"] == r["answer"] else 0)
        acc.append(score)
        per_struct[r["structural"]].append(score)
        per_sem[r["semantic"]].append(score)
        (open_ if r["structural"] == "query" else binary).append(score)
        if r["group"] is not None:
            gold[r["group"]][r["answer"]] += 1
            pred[r["group"]][r["prediction"]] += 1
    dist = chi_square(gold, pred, notes)
    avg = (lambda xs: float(sum(xs)) / len(xs) * 100 if xs else 0.0)  # eval.py's avg() returns 0 for []
    if not acc:
        notes.append("GQA: no balanced questions; accuracies reported as 0 (as eval.py's avg([]) does)")
    return {"accuracy": avg(acc), "binary": avg(binary), "open": avg(open_),
            "distribution": None if dist is None else dist / 100,
            "per_structural_type": {k: avg(v) for k, v in sorted(per_struct.items())},
            "per_semantic_type": {k: avg(v) for k, v in sorted(per_sem.items())},
            "n_balanced": len(acc)}
