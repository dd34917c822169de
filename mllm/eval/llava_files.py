"""LLaVA-1.5's eval.zip layout: its question files and where its scripts look for images and annotations.

LLaVA measured its published numbers with the prompts in these files (``scripts/v1_5/eval/<bench>.sh``), so
when ``--data`` is a folder of that layout (``playground/data/eval/<bench>``) or one of these files, the
benchmark reads its prompts from there and only its labels from the original annotation files. Each
benchmark's reader documents which annotation file it pairs the questions with.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .io import read_jsonl, require_keys
from ..constants import IMAGE_TOKEN
from .types import BenchmarkDataError

# benchmark name -> LLaVA's question file name(s), as its eval scripts pass them to --question-file
QUESTION_FILES: dict[str, tuple[str, ...]] = {
    "vqav2": ("llava_vqav2_mscoco_test-dev2015.jsonl", "llava_vqav2_mscoco_test2015.jsonl"),
    "gqa": ("llava_gqa_testdev_balanced.jsonl",),
    "vizwiz": ("llava_test.jsonl",),
    "textvqa": ("llava_textvqa_val_v051_ocr.jsonl",),
    "pope": ("llava_pope_test.jsonl",),
    "mme": ("llava_mme.jsonl",),
    "sqa": ("llava_test_CQM-A.json",),
    "seed": ("llava-seed-bench.jsonl",),
    "mmvet": ("llava-mm-vet.jsonl",),
}


def find_question_file(data: str | Path, benchmark: str) -> Path | None:
    """LLaVA's question file for ``benchmark`` under ``data`` (a folder) or ``data`` itself (a file), else None.

    A file that is another benchmark's LLaVA question file is refused with a one-line error; a ``.jsonl``
    (``.json`` for ScienceQA) file under another name is taken as a renamed question file and validated by
    the benchmark's reader.
    """
    path = Path(data)
    names = QUESTION_FILES.get(benchmark, ())
    if path.is_dir():
        return next((path / n for n in names if (path / n).is_file()), None)
    if not path.is_file():
        return None
    owner = next((b for b, ns in QUESTION_FILES.items() if path.name in ns), None)
    if owner is not None and owner != benchmark:
        raise BenchmarkDataError(f"{path} is LLaVA's question file for {owner!r}, not for {benchmark!r}")
    suffixes = {Path(n).suffix for n in names}
    return path if owner == benchmark or path.suffix in suffixes else None


def read_questions(path: Path, required: Iterable[str] = ("question_id", "image", "text"),
                   benchmark: str = "") -> list[dict]:
    """The records of a LLaVA question file (JSON lines), each checked for ``required`` keys; ids that repeat
    are allowed (LLaVA's MME and TextVQA files repeat them), an empty file is an error."""
    rows = read_jsonl(path)
    if not rows:
        raise BenchmarkDataError(f"{path}: no questions")
    for n, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise BenchmarkDataError(f"{path}:{n}: expected a JSON object per line")
        try:
            require_keys(r, required, f"{path}:{n}")
        except BenchmarkDataError as e:
            raise BenchmarkDataError(f"{e} (is this LLaVA's {benchmark or 'question'} file?)") from None
    return rows


def check_categories(rows: list[dict], path: Path, allowed: Iterable[str], benchmark: str) -> list[str]:
    """The categories of ``rows`` in first-seen order; any outside ``allowed`` means the file is another
    benchmark's (one-line error)."""
    allowed = set(allowed)
    seen = list(dict.fromkeys(str(r.get("category")) for r in rows))
    bad = [c for c in seen if c not in allowed]
    if bad:
        raise BenchmarkDataError(f"{path}: categories {bad[:5]} are not {benchmark} categories "
                                 f"({sorted(allowed)[:6]}...): this is not LLaVA's {benchmark} question file")
    return seen


def strip_image_marker(text: str) -> str:
    """A prompt without the leading ``<image>\\n`` LLaVA's loaders add (its answers' ``prompt`` field may or
    may not carry it)."""
    return text[len(IMAGE_TOKEN) + 1:] if text.startswith(IMAGE_TOKEN + "\n") else text


__all__ = ["QUESTION_FILES", "check_categories", "find_question_file", "read_questions", "strip_image_marker"]
