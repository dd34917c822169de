"""Readers for LLaVA's JSON (one list) and JSONL files, kept compact for DataLoader workers.

Records are stored as serialised bytes in one numpy buffer plus offsets, not as a list of Python dicts (as
LLaVA's ``LazySupervisedDataset`` keeps them), so forked DataLoader workers do not each copy the dataset page
by page through reference counting (copy-on-access, pytorch/pytorch#13246). Only cheap metadata is computed
up front: ids and LLaVA's word-count length estimate (``modality_lengths``, signed by modality) for the sampler.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


class RecordError(ValueError):
    """A record that cannot be parsed or has the wrong shape; ``reason`` matches the skip reasons."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def image_paths(record: dict) -> list[str]:
    """The record's ``image`` field as a list (str, list of str, or absent/None/[] for text-only)."""
    image = record.get("image")
    if image is None:
        return []
    if isinstance(image, str):
        if not image.strip():
            raise RecordError("malformed_record", "image is an empty string")
        return [image]
    if isinstance(image, list) and all(isinstance(p, str) and p.strip() for p in image):
        return list(image)
    raise RecordError("malformed_record", f"image must be a path or a list of paths, got {image!r:.80}")


def record_id(record) -> str | None:
    rid = record.get("id") if isinstance(record, dict) else None
    return None if rid is None else str(rid)


def estimate_length(record) -> int:
    """LLaVA's ``modality_lengths`` entry: word count of all turns, positive with images, negative without."""
    if not isinstance(record, dict):
        return -1
    words = 0
    conversations = record.get("conversations")
    if isinstance(conversations, list):
        for turn in conversations:
            value = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
            if isinstance(value, str):
                words += len(value.split())  # LLaVA counts an <image> marker as a word too
    try:
        has_image = bool(image_paths(record))
    except RecordError:
        has_image = bool(record.get("image"))
    words = max(words, 1)  # LLaVA's sampler asserts non-zero lengths
    return words if has_image else -words


class RecordStore:
    """Random access to the records of one ``.json`` (a list) or ``.jsonl`` file."""

    def __init__(self, path: str | os.PathLike, limit: int | None = None):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"data file not found: {self.path}")
        raw = Path(self.path).read_bytes()
        self.format = _detect_format(self.path, raw)
        parsed = None
        if self.format == "jsonl":
            chunks, self.lines = self._split_jsonl(raw)
        else:
            parsed, self.lines = self._parse_json(raw), None
            parsed = parsed[:limit] if limit is not None else parsed
            chunks = [json.dumps(r, ensure_ascii=False).encode() for r in parsed]
        if limit is not None:
            chunks = chunks[:limit]
            self.lines = self.lines[:limit] if self.lines is not None else None
        self._offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
        np.cumsum([len(c) for c in chunks], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(chunks), dtype=np.uint8)
        if self.lines is not None:
            self.lines = np.asarray(self.lines, dtype=np.int64)
        lengths = np.empty(len(chunks), dtype=np.int64)
        for i in range(len(chunks)):
            try:
                record = parsed[i] if parsed is not None else self.record(i)
            except RecordError:
                record = None
            lengths[i] = estimate_length(record)
        self.modality_lengths = lengths

    @staticmethod
    def _parse_json(raw: bytes) -> list:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc}); a LLaVA data file is one JSON list or JSONL") from exc
        if not isinstance(data, list):
            raise ValueError(f"a LLaVA JSON data file must hold a list of records, got {type(data).__name__}")
        return data

    @staticmethod
    def _split_jsonl(raw: bytes):
        chunks, lines = [], []
        for number, line in enumerate(raw.split(b"\n"), start=1):
            if line.strip():
                chunks.append(line)
                lines.append(number)
        return chunks, lines

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def record(self, i: int):
        """The parsed record ``i`` (raises :class:`RecordError` for a JSONL line that is not JSON)."""
        blob = self._buffer[self._offsets[i] : self._offsets[i + 1]].tobytes()
        try:
            return json.loads(blob)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecordError("invalid_json", f"{exc}") from exc

    def record_id(self, i: int) -> str | None:
        """The record's ``id`` as a string (None when absent or unreadable); parsed on demand, not stored."""
        try:
            record = self.record(i)
        except RecordError:
            return None
        return record_id(record)

    def location(self, i: int) -> str:
        """Where record ``i`` lives, for error messages (``file:line`` for JSONL)."""
        return f"{self.path}:{self.lines[i]}" if self.lines is not None else f"{self.path}[{i}]"


def _detect_format(path: str, raw: bytes) -> str:
    """``.jsonl`` is JSONL and ``.json`` a JSON list; any other name is sniffed (a list starts with ``[``)."""
    if path.endswith(".jsonl"):
        return "jsonl"
    if path.endswith(".json"):
        return "json"
    return "json" if raw.lstrip()[:1] == b"[" else "jsonl"
