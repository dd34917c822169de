"""LLaVA-Bench-in-the-Wild (60 questions), judged like LLaVA's ``eval_gpt_review_bench.py`` +
``summarize_gpt_review.py`` when an OpenAI-compatible endpoint is configured.

Expected layout under ``data`` (the HF dataset ``liuhaotian/llava-bench-in-the-wild``)::

    questions.jsonl      {"question_id", "image", "text", "category": conv|detail|complex}
    context.jsonl        {"image", "caption": str | [str]}
    answers_gpt4.jsonl   {"question_id", "text", ...}  the reference answers, in question order
    images/<image>

Prompt: ``<image>\\n{text}`` (no suffix). The judge (default ``gpt-4-0314``, temperature 0.2) sees the caption,
the question, the GPT-4 answer as Assistant 1 and ours as Assistant 2, and replies with two 1-10 scores on its
first line (anything else scores [-1, -1], as LLaVA's parser does). Relative score = mean(ours) / mean(GPT-4)
* 100 after rounding both means to 3 decimals, per category and overall.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import read_jsonl, require_keys, write_jsonl
from ..judge import JudgeClient, JudgeConfig
from ..types import LONG_MAX_NEW_TOKENS, Benchmark, BenchmarkDataError, EvalItem, ScoreResult, gather_predictions, \
    prompt_with_image

JUDGE_MODEL = "gpt-4-0314"
SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."
# The "llava_bench_*" rule of LLaVA's llava/eval/table/rule.json (Apache-2.0), identical for all categories.
RULE_PROMPT = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. For your reference, the visual "
    "content in the image is represented with a few sentences describing the image. \nPlease rate the "
    "helpfulness, relevance, accuracy, level of details of their responses. Each assistant receives an overall "
    "score on a scale of 1 to 10, where a higher score indicates better overall performance.\nPlease first output "
    "a single line containing only two values indicating the scores for Assistant 1 and 2, respectively. The two "
    "scores are separated by a space.\nIn the subsequent line, please provide a comprehensive explanation of your "
    "evaluation, avoiding any potential bias and ensuring that the order in which the responses were presented "
    "does not affect your judgment.")


def review_content(caption: str, question: str, reference: str, answer: str, role: str = "Assistant") -> str:
    return (f"[Context]\n{caption}\n\n[Question]\n{question}\n\n[{role} 1]\n{reference}\n\n[End of {role} 1]\n\n"
            f"[{role} 2]\n{answer}\n\n[End of {role} 2]\n\n[System]\n{RULE_PROMPT}\n\n")


def parse_score(review: str) -> list[float]:
    """LLaVA's ``parse_score``: two numbers on the first line (comma or space separated), else [-1, -1]."""
    try:
        sp = review.split("\n")[0].replace(",", " ").split(" ")
        if len(sp) == 2:
            return [float(sp[0]), float(sp[1])]
        return [-1, -1]
    except (ValueError, AttributeError):
        return [-1, -1]


def summarize(tuples: Sequence[Sequence[float]]) -> dict:
    """``summarize_gpt_review.py`` for one category: means rounded to 3 decimals, relative in percent."""
    n = len(tuples)
    means = [round(sum(t[i] for t in tuples) / n, 3) for i in (0, 1)]
    relative = round(means[1] / means[0] * 100, 1) if means[0] else None
    return {"relative": relative, "reference_score": round(means[0] * 10, 1), "model_score": round(means[1] * 10, 1),
            "n": n}


@dataclass
class LLaVABench(Benchmark):
    data: str
    judge: JudgeConfig | None = None

    name = "llavabench"
    display_name = "LLaVA-Bench-in-the-Wild"
    main_metric = "relative"

    def load(self) -> list[EvalItem]:
        root = Path(self.data)
        questions = read_jsonl(root / "questions.jsonl")
        contexts = {c["image"]: c for c in read_jsonl(root / "context.jsonl")}
        references = read_jsonl(root / "answers_gpt4.jsonl")
        if len(references) != len(questions):
            raise BenchmarkDataError(f"{root / 'answers_gpt4.jsonl'} has {len(references)} answers for "
                                     f"{len(questions)} questions (they are matched line by line)")
        items = []
        for q, ref in zip(questions, references):
            require_keys(q, ("question_id", "image", "text", "category"), "questions.jsonl line")
            if q["image"] not in contexts:
                raise BenchmarkDataError(f"context.jsonl has no caption for image {q['image']}")
            cap = contexts[q["image"]]["caption"]
            items.append(EvalItem(
                question_id=str(q["question_id"]), prompt=prompt_with_image(q["text"]),
                images=(str(root / "images" / q["image"]),), max_new_tokens=LONG_MAX_NEW_TOKENS,
                target={"reference": ref["text"], "caption": "\n".join(cap) if isinstance(cap, list) else cap,
                        "category": q["category"], "question": q["text"]},
                meta={"question_id": q["question_id"], "category": q["category"]}))
        return items

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        notes: list[str] = []
        _, texts = gather_predictions(items, predictions, notes)
        if self.judge is None:
            notes.append("judge not configured (set OPENAI_API_KEY and/or OPENAI_BASE_URL): answers written in "
                         "LLaVA's answer format only")
            return self._result({"relative": None, "judged": False}, {}, notes, len(items))
        client, model = JudgeClient(self.judge), self.judge.model or JUDGE_MODEL
        per_sample, by_cat = {}, defaultdict(list)
        for it, text in zip(items, texts):
            t = it.target
            content = review_content(t["caption"], t["question"], t["reference"], text)
            review, used = client.complete([{"role": "system", "content": SYSTEM_PROMPT},
                                            {"role": "user", "content": content}], model, 0.2, 1024)
            pair = parse_score(review)
            if pair == [-1, -1]:
                notes.append(f"{it.question_id}: judge reply unparsable, scored [-1, -1] as LLaVA does")
            by_cat[f"llava_bench_{t['category']}"].append(pair)
            by_cat["all"].append(pair)
            per_sample[it.question_id] = {"score": pair[1], "tuple": pair, "review": review, "judge_model": used}
        summary = {k: summarize(v) for k, v in sorted(by_cat.items())}
        for k, s in summary.items():
            if s["relative"] is None:
                notes.append(f"{k}: mean reference score is 0; relative score undefined (official divides by zero)")
        return self._result({"relative": summary["all"]["relative"], "judged": True, "judge_model": model,
                             "categories": summary}, per_sample, notes, len(items))

    def write_submission(self, items, predictions, out_dir) -> list[Path]:
        """The model answer file ``eval_gpt_review_bench.py`` reads (LLaVA's ``model_vqa.py`` output format)."""
        rows = [{"question_id": it.meta["question_id"], "prompt": it.target["question"],
                 "text": predictions.get(it.question_id, ""), "answer_id": it.question_id,
                 "model_id": "llm2clip-llava", "metadata": {}} for it in items]
        return [write_jsonl(Path(out_dir) / "llavabench_answers.jsonl", rows)]
