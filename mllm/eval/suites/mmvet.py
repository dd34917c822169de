"""MM-Vet (218 questions), judged like the official ``mm-vet_evaluator.py`` when an OpenAI-compatible endpoint
is configured.

Expected layout under ``data`` (``mm-vet.zip``; LLaVA's ``playground/data/eval/mm-vet``, whose
``llava-mm-vet.jsonl`` then gives the prompts, its question ``N`` being ``v1_N``)::

    mm-vet.json   {"v1_0": {"imagename": "v1_0.png", "question", "answer", "capability": [...]}, ...}
    images/<imagename>

Prompt: ``<image>\\n{question}`` (no suffix). The results file (``write_submission``) is ``{"v1_0": answer, ...}``
as LLaVA's ``convert_mmvet_for_eval.py`` writes it. The judge (default ``gpt-4-0613``, max 3 tokens) completes
a few-shot table with a 0.0-1.0 correctness; unparsable replies are retried with a "(digit)" hint at rising
temperature and score 0.0 after the fifth retry; a reply of "nan" passes the official range check and makes
the totals NaN there, and here (noted). Scores: per capability and total, percent, mean over runs.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import read_json, require_keys, write_json
from ..judge import JudgeClient, JudgeConfig
from ..llava_files import find_question_file, read_questions
from ..types import LONG_MAX_NEW_TOKENS, Benchmark, BenchmarkDataError, EvalItem, ScoreResult, gather_predictions, \
    prompt_with_image

JUDGE_MODEL = "gpt-4-0613"
# The grader prompt of MM-Vet's mm-vet_evaluator.py (Apache-2.0).
GRADER_PROMPT = (
    "Compare the ground truth and prediction from AI models, to give a correctness score for the "
    "prediction. <AND> in the ground truth means it is totally right only when all elements in the ground "
    "truth are present in the prediction, and <OR> means it is totally right when any one element in the "
    "ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, "
    "0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the "
    "correctness score.\n"
    "\n"
    "Question | Ground truth | Prediction | Correctness\n"
    "--- | --- | --- | ---\n"
    "What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0\n"
    "What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5\n"
    "What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5\n"
    "What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5\n"
    "What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0\n"
    "Can you explain this meme? | This meme is poking fun at the fact that the names of the countries "
    "Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green "
    "landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person "
    "has trust issues because the names of these countries do not accurately represent their landscapes. "
    "| The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is "
    "not very icy and Greenland isn't very green. | 0.4\n"
    "Can you explain this meme? | This meme is poking fun at the fact that the names of the countries "
    "Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green "
    "landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person "
    "has trust issues because the names of these countries do not accurately represent their landscapes. "
    "| The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. "
    "Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and "
    "snow. The text 'This is why I have trust issues' is a playful way to suggest that these "
    "contradictions can lead to distrust or confusion. The humor in this meme is derived from the "
    "unexpected contrast between the names of the countries and their actual physical characteristics. | "
    "1.0\n"
)
RETRY_HINT = "\nPredict the correctness of the answer (digit): "


def grader_question(question: str, answer: str, prediction: str, retry: bool = False) -> str:
    gt = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return GRADER_PROMPT + "\n" + " | ".join([question, gt, prediction, ""]) + (RETRY_HINT if retry else "")


def parse_grade(content) -> float | None:
    """The first space-separated token as a float not outside [0, 1] (so "nan" passes, as officially), else None."""
    try:
        score = float(content.split(" ")[0].strip())
    except (ValueError, AttributeError):
        return None
    return None if (score > 1.0 or score < 0.0) else score


def grade(client: JudgeClient, model: str, question: str, answer: str, prediction: str, run: int) -> tuple[float, str]:
    """One grading run, with the official retry schedule (retries at temperature 0, 0.5, 1, 1.5, 2)."""
    content, _ = client.complete([{"role": "user", "content": grader_question(question, answer, prediction)}],
                                 model, 0.0, 3, salt=f"run{run}")
    temperature, tries = 0.0, 1
    while (score := parse_grade(content)) is None:
        content, _ = client.complete([{"role": "user", "content": grader_question(question, answer, prediction,
                                                                                  True)}],
                                     model, temperature, 3, salt=f"run{run}-try{tries}")
        tries += 1
        temperature += 0.5
        if tries > 5:
            return 0.0, content
    return score, content


@dataclass
class MMVet(Benchmark):
    data: str
    judge: JudgeConfig | None = None
    num_runs: int = 1

    name = "mmvet"
    display_name = "MM-Vet"
    main_metric = "total"

    @staticmethod
    def _metadata(root: Path, required: bool = True) -> dict:
        if not required and not (root / "mm-vet.json").is_file():
            return {}
        meta = read_json(root / "mm-vet.json")
        if not isinstance(meta, dict):
            raise BenchmarkDataError(f"{root / 'mm-vet.json'}: expected an object keyed by question id")
        for qid, q in meta.items():
            require_keys(q, ("imagename", "question", "answer", "capability"), f"mm-vet.json {qid}")
        return meta

    @staticmethod
    def _target(q: dict | None):
        return None if q is None else {"question": q["question"], "answer": q["answer"],
                                       "capability": list(q["capability"])}

    def load(self) -> list[EvalItem]:
        qfile = find_question_file(self.data, self.name)
        root = Path(self.data) if qfile is None else qfile.parent
        if qfile is not None:
            meta = self._metadata(root, required=False)
            return [EvalItem(question_id=f"v1_{r['question_id']}", prompt=prompt_with_image(r["text"]),
                             images=(str(root / "images" / r["image"]),), max_new_tokens=LONG_MAX_NEW_TOKENS,
                             target=self._target(meta.get(f"v1_{r['question_id']}")),
                             meta={"llava_id": r["question_id"]})
                    for r in read_questions(qfile, benchmark="MM-Vet")]
        return [EvalItem(question_id=str(qid), prompt=prompt_with_image(q["question"]),
                         images=(str(root / "images" / q["imagename"]),), max_new_tokens=LONG_MAX_NEW_TOKENS,
                         target=self._target(q), meta={"llava_id": int(qid[3:]) if qid[3:].isdigit() else qid})
                for qid, q in self._metadata(root).items()]

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        notes: list[str] = []
        _, texts = gather_predictions(items, predictions, notes)
        if any(it.target is None for it in items):
            notes.append("mm-vet.json (questions' answers and capabilities) not found: results file written for "
                         "the official grader only")
            return self._result({"total": None, "judged": False}, {}, notes, len(items))
        if self.judge is None:
            notes.append("judge not configured (set OPENAI_API_KEY and/or OPENAI_BASE_URL): results file written "
                         "for the official grader only")
            return self._result({"total": None, "judged": False}, {}, notes, len(items))
        if not items:
            notes.append("no items; scores undefined (the official grader divides by zero)")
            return self._result({"total": None, "judged": True}, {}, notes, 0)
        client, model = JudgeClient(self.judge), self.judge.model or JUDGE_MODEL
        per_sample, runs = {}, []
        caps = sorted({c for it in items for c in it.target["capability"]})
        for run in range(self.num_runs):
            cap_sum, total = dict.fromkeys(caps, 0.0), 0.0
            for it, text in zip(items, texts):
                t = it.target
                s, content = grade(client, model, t["question"], t["answer"], text, run)
                if s != s:  # "nan" passes the official range check and turns its totals into NaN
                    notes.append(f"{it.question_id} run {run}: judge replied {content!r}, which the official "
                                 "grader accepts as NaN; its totals become NaN, as here")
                per_sample.setdefault(it.question_id, {"scores": [], "contents": []})
                per_sample[it.question_id]["scores"].append(s)
                per_sample[it.question_id]["contents"].append(content)
                for c in set(t["capability"]):
                    cap_sum[c] += s
                total += s
            counts = {c: sum(1 for it in items if c in it.target["capability"]) for c in caps}
            runs.append({"total": total / len(items) * 100, **{c: cap_sum[c] / counts[c] * 100 for c in caps}})
        for rec in per_sample.values():
            rec["score"] = sum(rec["scores"]) / len(rec["scores"])
        mean = (lambda key: sum(r[key] for r in runs) / len(runs))
        metrics = {"total": mean("total"), "judged": True, "judge_model": model, "runs": [r["total"] for r in runs],
                   "per_capability": {c: mean(c) for c in caps}}
        return self._result(metrics, per_sample, notes, len(items))

    def write_submission(self, items, predictions, out_dir) -> list[Path]:
        results = {it.question_id: predictions.get(it.question_id, "") for it in items}
        return [write_json(Path(out_dir) / "mmvet_results.json", results, indent=2)]
