"""File helpers for benchmark readers: every failure names the file and what is wrong."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from .types import BenchmarkDataError

# pandas.read_table's default NA strings: LLaVA and VLMEvalKit read MMBench TSVs with pandas, so a cell
# holding one of these is a missing option/hint there; we treat it the same way.
PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                       "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


def is_missing(value) -> bool:
    """pandas NA or LLaVA's ``is_none`` ('nan'/'none' in any case)."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    s = str(value)
    return s in PANDAS_NA or s.lower() in ("nan", "none")


def read_json(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise BenchmarkDataError(f"missing file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchmarkDataError(f"{path}: not valid JSON ({e})") from e


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise BenchmarkDataError(f"missing file: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BenchmarkDataError(f"{path}:{n}: not valid JSON ({e})") from e
    return rows


def read_tsv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a tab-separated file with a header, cells as strings (base64 images make cells huge)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkDataError(f"missing file: {path}")
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = list(reader)
    if reader.fieldnames is None:
        raise BenchmarkDataError(f"{path}: empty TSV (no header)")
    return rows


def require_keys(record: dict, keys, where: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise BenchmarkDataError(f"{where}: missing field(s) {missing}")


def first_existing(candidates, what: str) -> Path:
    """The first existing path of ``candidates``, else an error listing where we looked."""
    candidates = [Path(c) for c in candidates]
    for c in candidates:
        if c.exists():
            return c
    raise BenchmarkDataError(f"{what} not found; looked for: " + ", ".join(str(c) for c in candidates))


def write_json(path: str | Path, obj, indent: int | None = None) -> Path:
    """JSON as LLaVA's converters write it (``json.dump`` defaults: ASCII escapes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent), encoding="utf-8")
    return path


def write_jsonl(path: str | Path, rows) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path
