"""MMBench / MMBench-CN (LLaVA-1.5: dev 20230712 / dev-cn 20231003), circular evaluation.

Expected input: the official TSV (``data`` = the file, or a folder holding ``<split>.tsv``) with columns
``index, question, hint, A, B, C, D, answer (dev only), category, l2-category, image (base64), ...``. Rows
with ``index >= 1e6`` are the circular copies (options rotated) of row ``index % 1e6``; an ``image`` cell
that is just a row index points to that row's image (VLMEvalKit's space saving). Images are decoded once
into ``image_cache_dir`` (default ``<tsv folder>/<tsv stem>_images``).

Prompt (``llava/eval/model_vqa_mmbench.py --single-pred-prompt``): ``<image>\\n{hint}\\n{question}\\nA. ..\\n
B. ..\\nAnswer with the option's letter from the given choices directly.`` (CN: ``请直接回答选项字母。``).
Local score (dev): VLMEvalKit's exact-matching ``can_infer`` + circular evaluation (a question counts when
every rotation is right). A TSV without circular rows gets LLaVA's ``--all-rounds`` rotations generated
(ids ``index + k*1e6``) when it has answers. Submission: LLaVA's ``convert_mmbench_for_submission.py`` xlsx.
"""
from __future__ import annotations

import base64
import binascii
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import is_missing, read_tsv
from ..scorers.mcq import can_infer, rotate_options
from ..types import (LONG_MAX_NEW_TOKENS, MCQ_ANSWER, MCQ_ANSWER_CN, Benchmark, BenchmarkDataError, EvalItem,
                     ScoreResult, gather_predictions, prompt_with_image, ratio)
from ..xlsx import write_xlsx

CIRCULAR_OFFSET = 1_000_000
_DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")  # LLaVA's converter drops these


def _image_ext(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"GIF8"):
        return ".gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".jpg"


@dataclass
class MMBench(Benchmark):
    data: str
    split: str = "mmbench_dev_20230712"
    lang: str = "en"
    circular: bool = True
    image_cache_dir: str | None = None

    name = "mmbench"
    display_name = "MMBench"
    main_metric = "accuracy"
    server_side = True

    @staticmethod
    def llava_answer_key(record) -> str:
        """LLaVA's ``model_vqa_mmbench.py`` answers: the row ``index`` plus, with ``--all-rounds``, the rotation
        ``round_id`` (our generated rotations are ``index + round * 1e6``)."""
        return str(int(record["question_id"]) + int(record.get("round_id") or 0) * CIRCULAR_OFFSET)

    def _tsv(self) -> Path:
        p = Path(self.data)
        return p if p.is_file() else p / f"{self.split}.tsv"

    def _decode_images(self, rows: list[dict], tsv: Path) -> dict[int, str]:
        cache = Path(self.image_cache_dir) if self.image_cache_dir else tsv.parent / f"{tsv.stem}_images"
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BenchmarkDataError(f"cannot create the MMBench image cache {cache} ({e}); "
                                     "set image_cache_dir to a writable folder") from e
        raw = {int(r["index"]): r.get("image") or "" for r in rows}
        paths: dict[int, str] = {}
        for idx, cell in raw.items():
            if cell.isdigit() and len(cell) <= 64 and int(cell) in raw:  # a pointer to another row's image
                cell = raw[int(cell)]
            try:
                data = base64.b64decode(cell, validate=False)
            except (binascii.Error, ValueError) as e:
                raise BenchmarkDataError(f"{tsv}: row {idx}: image is not base64 ({e})") from e
            if not data:
                raise BenchmarkDataError(f"{tsv}: row {idx}: empty image")
            path = cache / f"{idx}{_image_ext(data)}"
            if not path.exists() or path.stat().st_size != len(data):
                path.write_bytes(data)
            paths[idx] = str(path)
        return paths

    def _prompt(self, row: dict, options: list[str]) -> str:
        question = row["question"]
        if not is_missing(row.get("hint")):
            question = row["hint"] + "\n" + question
        for letter, option in zip(string.ascii_uppercase, options):
            question += f"\n{letter}. {option}"
        suffix = MCQ_ANSWER_CN if self.lang == "cn" else MCQ_ANSWER
        return prompt_with_image(f"{question}\n{suffix}")

    def load(self) -> list[EvalItem]:
        tsv = self._tsv()
        rows = read_tsv(tsv)
        for r in rows:
            if "index" not in r or "question" not in r:
                raise BenchmarkDataError(f"{tsv}: needs 'index' and 'question' columns")
            try:
                int(r["index"])
            except ValueError as e:
                raise BenchmarkDataError(f"{tsv}: index {r['index']!r} is not an integer") from e
        images = self._decode_images(rows, tsv)
        has_circular = any(int(r["index"]) >= CIRCULAR_OFFSET for r in rows)
        items = []
        for r in rows:
            idx = int(r["index"])
            options = []
            for letter in string.ascii_uppercase:  # LLaVA's get_options: stop at the first missing option
                if letter not in r or is_missing(r[letter]):
                    break
                options.append(r[letter])
            # scoring sees every non-missing option column (VLMEvalKit's build_choices), the prompt LLaVA's list
            scored = {L: r[L] for L in string.ascii_uppercase if L in r and not is_missing(r[L])}
            gt = None if is_missing(r.get("answer")) else r["answer"].strip()
            rotatable = gt is not None and gt in string.ascii_uppercase[:len(options)]
            rounds = len(options) if (self.circular and not has_circular and rotatable) else 1
            for k in range(rounds):
                opts, ans = rotate_options(options, gt, k)
                qid = idx + k * CIRCULAR_OFFSET
                items.append(EvalItem(
                    question_id=str(qid), prompt=self._prompt(r, opts), images=(images[idx],),
                    max_new_tokens=LONG_MAX_NEW_TOKENS,
                    target={"gt": ans, "choices": dict(zip(string.ascii_uppercase, opts)) if k else scored,
                            "g_index": qid % CIRCULAR_OFFSET},
                    meta={"index": qid, "generated": k > 0, "category": r.get("category"),
                          "l2_category": r.get("l2-category")}))
        return items

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> ScoreResult:
        notes: list[str] = []
        _, texts = gather_predictions(items, predictions, notes)
        if any(it.target["gt"] is None for it in items):
            notes.append("no answers (test split): scored by the OpenCompass server; upload the xlsx")
            return self._result({"accuracy": None}, {}, notes, len(items))
        per_sample, groups = {}, defaultdict(list)
        for it, text in zip(items, texts):
            letter = can_infer(text, dict(it.target["choices"]))
            ok = letter == it.target["gt"]
            per_sample[it.question_id] = {"score": float(ok), "parsed": letter or None}
            groups[it.target["g_index"]].append(ok)
        main = [it for it in items if int(it.question_id) == it.target["g_index"]]
        orphans = len(groups) - len(main)
        if orphans:
            notes.append(f"{orphans} circular groups have no main row (index < 1e6) and are not scored, "
                         "as in VLMEvalKit")
        hits = {it.question_id: float(all(groups[it.target["g_index"]])) for it in main}
        for qid, h in hits.items():
            per_sample[qid]["circular_hit"] = h
        mean = (lambda xs, what: None if (v := ratio(sum(xs), len(xs), what, notes, None)) is None else 100 * v)
        metrics = {"accuracy": mean(list(hits.values()), "MMBench circular accuracy"),
                   "vanilla_accuracy": mean([per_sample[it.question_id]["score"] for it in main],
                                            "MMBench vanilla accuracy"),
                   "circular": any(len(v) > 1 for v in groups.values())}
        for key in ("l2_category", "category"):
            buckets = defaultdict(list)
            for it in main:
                buckets[it.meta.get(key)].append(hits[it.question_id])
            metrics[f"per_{key}"] = {str(k): 100 * sum(v) / len(v) for k, v in sorted(buckets.items(), key=str)}
        return self._result(metrics, per_sample, notes, len(main))

    def write_submission(self, items, predictions, out_dir) -> list[Path]:
        """LLaVA's upload: the TSV's own rows minus hint/category/source/image/comment/l2-category, with a
        ``prediction`` column inserted at position 6."""
        tsv = self._tsv()
        rows = read_tsv(tsv)
        header = [c for c in rows[0].keys() if c not in _DROPPED] if rows else ["index", "question"]
        header.insert(min(6, len(header)), "prediction")
        out = []
        for r in rows:
            cells = []
            for c in header:
                if c == "prediction":
                    cells.append(predictions.get(str(int(r["index"]))))
                elif c == "index":
                    cells.append(int(r["index"]))
                else:
                    cells.append(None if is_missing(r.get(c)) else r.get(c))
            out.append(cells)
        return [write_xlsx(Path(out_dir) / f"{tsv.stem}.xlsx", header, out)]


@dataclass
class MMBenchCN(MMBench):
    split: str = "mmbench_dev_cn_20231003"
    lang: str = "cn"

    name = "mmbench_cn"
    display_name = "MMBench-CN"
