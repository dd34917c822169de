"""SEED-Bench (v1), scored like LLaVA's ``scripts/convert_seed_for_submission.py`` (exact string equality).

Expected layout under ``data`` (LLaVA's ``playground/data/eval/seed_bench``)::

    SEED-Bench.json            {"questions": [{question_id, question, choice_a..choice_d, answer, data_id,
                               data_type: image|video, question_type_id}], "question_type": {name: id}}
    llava-seed-bench.jsonl     optional: LLaVA's question file; when present it gives the prompts and images
    SEED-Bench-image/<data_id>             image questions
    SEED-Bench-video-image/<question_type_id>_<question_id>.png   the frame of each video question, made by
                               LLaVA's extract_video_frames.py

Prompt: ``<image>\\n{question}\\nA. {choice_a}\\nB. ..\\nD. {choice_d}\\nAnswer with the option's letter from
the given choices directly.`` Metrics: accuracy over all, image-only and video-only questions, and per type.
As in convert_seed_for_submission.py, every question of SEED-Bench.json is in the denominators: a question
without an answer (e.g. a video question whose frame was never extracted, skipped as unreadable) is wrong.
``include_video=False`` leaves the video questions out altogether (LLaVA's image-only figure).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import read_json, require_keys, write_jsonl
from ..llava_files import find_question_file, read_questions
from ..types import SHORT_MAX_NEW_TOKENS, MCQ_ANSWER, Benchmark, BenchmarkDataError, EvalItem, ScoreResult, \
    gather_predictions, prompt_with_image, ratio

VIDEO_FRAMES = "SEED-Bench-video-image"


@dataclass
class SEEDBench(Benchmark):
    data: str
    include_video: bool = True
    annotation_file: str = "SEED-Bench.json"

    name = "seed"
    display_name = "SEED-Bench"
    main_metric = "accuracy"

    def load(self) -> list[EvalItem]:
        qfile = find_question_file(self.data, self.name)
        root = Path(self.data) if qfile is None else qfile.parent
        data = read_json(root / self.annotation_file)
        if not isinstance(data, dict) or "questions" not in data:
            raise BenchmarkDataError(f"{root / self.annotation_file}: expected an object with 'questions'")
        type_names = {v: k for k, v in (data.get("question_type") or {}).items()}
        llava = {str(r["question_id"]): r for r in read_questions(qfile, benchmark="SEED-Bench")} if qfile else {}
        if llava and (unknown := set(llava) - {str(q.get("question_id")) for q in data["questions"]}):
            raise BenchmarkDataError(f"{qfile}: {len(unknown)} question ids (e.g. {sorted(unknown)[0]}) are not in "
                                     f"{root / self.annotation_file}")
        items = []
        for q in data["questions"]:
            require_keys(q, ("question_id", "question", "choice_a", "choice_b", "choice_c", "choice_d",
                             "data_type", "question_type_id"), f"{self.annotation_file} question")
            if q["data_type"] == "video" and not self.include_video:
                continue
            row = llava.get(str(q["question_id"]))
            if row is not None:
                text, image = row["text"], root / row["image"]
            else:
                text = q["question"] + "".join(f"\n{L}. {q['choice_' + L.lower()]}" for L in "ABCD")
                text = f"{text}\n{MCQ_ANSWER}"
                image = (root / VIDEO_FRAMES / f"{q['question_type_id']}_{q['question_id']}.png"
                         if q["data_type"] == "video" else root / "SEED-Bench-image" / q["data_id"])
            items.append(EvalItem(
                question_id=str(q["question_id"]), prompt=prompt_with_image(text),
                images=(str(image),), max_new_tokens=SHORT_MAX_NEW_TOKENS, target=q.get("answer"),
                meta={"question_id": q["question_id"], "data_type": q["data_type"],
                      "question_type": type_names.get(q["question_type_id"], str(q["question_type_id"]))}))
        return items

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        notes: list[str] = []
        _, texts = gather_predictions(items, predictions, notes, self.missing_answers,
                                      "convert_seed_for_submission.py")
        no_frame = sum(1 for it in items if it.meta["data_type"] == "video" and it.question_id not in predictions)
        if no_frame:
            notes.append(f"{no_frame} video questions have no answer (frames not extracted into {VIDEO_FRAMES}/ by "
                         "LLaVA's extract_video_frames.py?): counted wrong in the total and video accuracy, as "
                         "convert_seed_for_submission.py does; include_video=false scores image questions only")
        per_sample, by_type, by_data = {}, defaultdict(list), defaultdict(list)
        for it, text in zip(items, texts):
            ok = text == it.target
            per_sample[it.question_id] = {"score": float(ok)}
            by_type[it.meta["question_type"]].append(ok)
            by_data[it.meta["data_type"]].append(ok)

        def pct(xs, what):
            v = ratio(sum(xs), len(xs), what, notes, None)
            return None if v is None else v * 100

        metrics = {"accuracy": pct([ok for v in by_type.values() for ok in v], "SEED total accuracy"),
                   "image_accuracy": pct(by_data.get("image", []), "SEED image accuracy"),
                   "video_accuracy": pct(by_data.get("video", []), "SEED video accuracy"),
                   "per_question_type": {k: pct(v, f"SEED {k}") for k, v in sorted(by_type.items())}}
        return self._result(metrics, per_sample, notes, len(items))

    def write_submission(self, items, predictions, out_dir) -> list[Path]:
        """The leaderboard upload of ``convert_seed_for_submission.py``: ``{question_id, prediction}`` lines."""
        rows = [{"question_id": it.meta["question_id"], "prediction": predictions.get(it.question_id, "")}
                for it in items]
        return [write_jsonl(Path(out_dir) / "seed_bench_submission.jsonl", rows)]
