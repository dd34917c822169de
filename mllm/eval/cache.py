"""The prediction cache: an append-only JSONL file that lets an interrupted evaluation resume.

Line 1 is a header (what produced the predictions: model fingerprint, benchmark, options, generation
settings); every later line is one finished item ``{"question_id", "answer", "item_sha"}``, appended and
flushed (fsync'd) after each batch. Reopening with a different header is refused (``CacheMismatchError``
names the differing fields) unless the caller asks to start over; a record whose ``item_sha`` no longer
matches its item (prompt, images or token budget changed) is recomputed. A half-written last line (the
process was killed mid-write) is dropped; damage anywhere else is an error, never silently skipped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from .types import EvalItem

CACHE_FORMAT = "llm2clip-llava-eval-cache"
CACHE_VERSION = 1
_SAMPLE_BYTES = 1 << 20  # fingerprint: first and last MiB of each checkpoint file
log = logging.getLogger(__name__)


class CacheMismatchError(ValueError):
    """The cache in the output folder was written by another model, benchmark setup or generation setting."""


def item_sha(item: EvalItem) -> str:
    """What the answer depends on besides the model: the prompt, the image files and the token budget."""
    payload = json.dumps([item.prompt, list(item.images), item.max_new_tokens], ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def _file_digest(path: Path) -> str:
    """Size plus a hash of the first and last MiB: content-based (survives copies), fast on 14 GB shards."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE_BYTES))
        if size > 2 * _SAMPLE_BYTES:
            f.seek(size - _SAMPLE_BYTES)
            h.update(f.read(_SAMPLE_BYTES))
        elif size > _SAMPLE_BYTES:
            h.update(f.read())
    return h.hexdigest()


def model_fingerprint(model_dir: str | os.PathLike) -> dict:
    """Identity of a checkpoint: its manifest and the files of the parts it lists (never other files, so an
    eval folder inside the checkpoint does not change it). The base LLM of an adapter checkpoint is
    identified by the manifest's ``llm`` entry."""
    root = Path(model_dir)
    manifest_path = root / "config.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{root} is not a checkpoint: config.json is missing")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    h = hashlib.sha256(manifest_path.read_bytes())
    for part in sorted(set((manifest.get("contents") or {}).values())):
        base = root / part
        files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base] if base.is_file() else []
        for p in files:
            h.update(f"{p.relative_to(root).as_posix()}:{_file_digest(p)}\n".encode())
    return {"llm": manifest.get("llm"), "tower": (manifest.get("tower") or {}).get("name"), "sha256": h.hexdigest()}


def _diff(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: cached {a!r}, now {b!r}")
    return out


class PredictionCache:
    """``PredictionCache(path, header, overwrite=False)``; ``lookup(items)`` -> answers still valid,
    ``append([(item, answer), ...])`` after each batch, ``close()`` at the end (also a context manager)."""

    def __init__(self, path: str | os.PathLike, header: dict, overwrite: bool = False):
        self.path = Path(path)
        # through JSON once, so tuples compare equal to the lists read back from the file
        self.header = json.loads(json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, **header}))
        self.records: dict[str, dict] = {}
        self.dropped_partial_line = False
        self._header_seen = False
        if self.path.exists() and not overwrite:
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_header()
        self._fh = open(self.path, "a", encoding="utf-8")

    def _write_header(self) -> None:
        self.path.write_text(json.dumps(self.header, ensure_ascii=False) + "\n", encoding="utf-8")

    def _read(self) -> None:
        raw = self.path.read_bytes()
        if not raw.strip():  # an empty file (killed before the header was written): start afresh
            self._write_header()
            return
        lines = raw.split(b"\n")
        complete = raw.endswith(b"\n")
        good_bytes = 0
        for n, line in enumerate(lines, 1):
            if not line.strip():
                good_bytes += len(line) + 1
                continue
            if n > 1 and not self._header_seen:
                raise CacheMismatchError(f"{self.path} does not start with a cache header; choose another "
                                         "--output-dir")
            try:
                rec = json.loads(line.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                if n == len(lines) and not complete:  # killed mid-write: drop the half line
                    self.dropped_partial_line = True
                    break
                raise CacheMismatchError(f"{self.path}:{n} is damaged ({e}); delete the file or rerun with "
                                         "--overwrite") from e
            if n == 1:
                self._check_header(rec)
                self._header_seen = True
            else:
                if not isinstance(rec, dict) or "question_id" not in rec or "answer" not in rec:
                    raise CacheMismatchError(f"{self.path}:{n} is not a prediction record")
                self.records[str(rec["question_id"])] = rec
            good_bytes += len(line) + 1
        if self.dropped_partial_line:
            with open(self.path, "r+b") as f:
                f.truncate(good_bytes)
            log.warning("%s: dropped a half-written last line (interrupted run)", self.path)
        elif not complete:  # the last record is whole but its newline was never written
            with open(self.path, "ab") as f:
                f.write(b"\n")
        if not self._header_seen:  # only a half-written header was there
            self._write_header()

    def _check_header(self, cached: dict) -> None:
        if not isinstance(cached, dict) or cached.get("format") != CACHE_FORMAT:
            raise CacheMismatchError(f"{self.path} is not a prediction cache; choose another --output-dir")
        diffs = _diff(cached, self.header)
        if diffs:
            raise CacheMismatchError(
                f"{self.path} holds predictions of a different setup:\n  " + "\n  ".join(diffs)
                + "\nUse another --output-dir, or --overwrite to discard them.")

    def lookup(self, items: Iterable[EvalItem]) -> tuple[dict[str, str], int]:
        """Cached answers of ``items`` whose inputs are unchanged, and how many cached ones are stale."""
        found, stale = {}, 0
        for it in items:
            rec = self.records.get(it.question_id)
            if rec is None:
                continue
            if rec.get("item_sha") == item_sha(it):
                found[it.question_id] = rec["answer"]
            else:
                stale += 1
        return found, stale

    def append(self, pairs: Iterable[tuple[EvalItem, str]]) -> None:
        lines = []
        for it, answer in pairs:
            rec = {"question_id": it.question_id, "answer": answer, "item_sha": item_sha(it)}
            self.records[it.question_id] = rec
            lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
        self._fh.write("".join(lines))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> PredictionCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
