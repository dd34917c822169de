"""Check a LLaVA-1.5 data root before a long run: every piece present, complete and the version LLaVA used.

One `Finding` per problem (one line each), errors for what would break or silently change a run (a missing
or truncated file, a missing image folder, missing images, POPE's later revision, a benchmark its reader
refuses), warnings for what deserves a look (a record count or checksum that differs from LLaVA's, eval.zip's
question files absent). Images are checked on a deterministic sample per source (`sample`), or all of them
(`full=True`). Nothing is downloaded or written; the download commands for the failing pieces come with the
report. The layout itself (paths, counts, checksums, downloads) is `mllm.data.llava_layout`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..eval.suites import load_benchmark
from . import llava_layout as L

log = logging.getLogger(__name__)
_ALT_EXTS = (".png", ".gif", ".jpeg", ".JPG", ".PNG", ".webp")


@dataclass
class Finding:
    severity: str  # "error" | "warning"
    piece: str
    message: str

    def line(self) -> str:
        return f"{self.severity.upper():<7} [{self.piece}] {self.message}"


@dataclass
class CheckReport:
    root: Path
    summary: list[tuple[str, str]] = field(default_factory=list)  # (piece, what was found)
    findings: list[Finding] = field(default_factory=list)
    downloads: dict[str, list[str]] = field(default_factory=dict)  # piece -> commands, for pieces with problems

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def add(self, severity: str, piece: str, message: str, download: list[str] | None = None) -> None:
        self.findings.append(Finding(severity, piece, message))
        listed = self.downloads.setdefault(piece, []) if download else []
        listed += [cmd for cmd in download or () if cmd not in listed]

    def render(self) -> str:
        width = max([len(p) for p, _ in self.summary] + [8])
        lines = [f"LLaVA data root: {self.root}", ""]
        lines += [f"  {piece:<{width}}  {text}" for piece, text in self.summary]
        lines += ["", f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"]
        lines += [f.line() for f in self.findings]
        if self.downloads:
            lines += ["", "where the pieces with problems come from:"]
            for piece, cmds in self.downloads.items():
                lines += [f"  [{piece}] {cmd}" for cmd in cmds]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"root": str(self.root), "summary": dict(self.summary),
                "findings": [vars(f) for f in self.findings], "downloads": self.downloads,
                "errors": len(self.errors), "warnings": len(self.warnings)}


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def read_json_file(path: Path):
    """(data, None) or (None, why): a truncated file is named as such (the usual interrupted download)."""
    raw = path.read_bytes()
    try:
        return json.loads(raw), None
    except json.JSONDecodeError as e:
        tail = len(raw.rstrip())
        if e.pos >= tail - 1:
            return None, f"truncated JSON ({_size(len(raw))}, the text stops mid-value at byte {e.pos:,}: {e.msg})"
        return None, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text ({e.reason} at byte {e.start:,})"


class _Progress:
    """One tqdm bar over every image lookup of the run (or nothing)."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(unit="img", desc="checking images", leave=False)

    def add_total(self, n: int) -> None:
        if self.bar is not None:
            self.bar.total = (self.bar.total or 0) + n
            self.bar.refresh()

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LayoutChecker:
    def __init__(self, root: str | Path, *, full: bool = False, sample: int = 1000, seed: int = 0,
                 sha256: bool = False, progress: bool = True):
        if sample < 1:
            raise ValueError(f"sample must be >= 1, got {sample}")
        self.root = Path(root)
        self.full, self.sample, self.seed, self.sha256 = full, sample, seed, sha256
        self.report = CheckReport(self.root)
        self.progress = _Progress(progress)
        self.missing_question_files: list[str] = []  # eval.zip's, reported together (one problem: not extracted)

    def report_eval_zip(self) -> None:
        if self.missing_question_files:
            self.report.add("warning", "eval.zip", f"LLaVA's question files are missing under {L.EVAL_DIR}/ "
                            f"({', '.join(self.missing_question_files)}): eval.zip is not extracted there; the "
                            "prompts are built from each benchmark's original files instead",
                            self._downloads((L.EVAL_ZIP,)))

    # ------------------------------------------------------------------ helpers
    def _downloads(self, lines: tuple[str, ...]) -> list[str]:
        return L.commands(lines, str(self.root))

    def _pick(self, paths: list[str]) -> list[str]:
        if self.full or len(paths) <= self.sample:
            return paths
        return random.Random(self.seed).sample(paths, self.sample)

    def _missing_images(self, folder: Path, names: list[str]) -> tuple[list[str], int]:
        """Names (relative to `folder`) of the checked images that do not exist, and how many of those exist
        under another extension (OCR-VQA's images must all be .jpg: LLaVA renamed them)."""
        missing, other_ext = [], 0
        for name in names:
            path = folder / name
            if not path.is_file():
                missing.append(name)
                if any(path.with_suffix(ext).is_file() for ext in _ALT_EXTS if ext != path.suffix):
                    other_ext += 1
            self.progress.update()
        return missing, other_ext

    def _image_problem(self, piece: str, where: str, missing: list[str], checked: int, total: int,
                       other_ext: int, download: list[str]) -> None:
        scope = f"{checked:,} images checked" if checked == total else f"{checked:,} of {total:,} sampled"
        share = len(missing) / checked
        message = (f"{where}: {len(missing):,} missing ({scope}; ~{share:.1%} of the source, "
                   f"e.g. {missing[0]})")
        if other_ext:
            message += f"; {other_ext:,} of them exist with another extension (rename/convert them to the name "
            message += "the JSON uses)"
        self.report.add("error", piece, message, download)

    # ------------------------------------------------------------------ training data
    def check_training_set(self, spec: L.TrainingSet, sources: tuple[L.ImageSource, ...]) -> None:
        path = self.root / spec.path
        downloads = self._downloads(spec.download)
        if not path.is_file():
            self.report.summary.append((spec.key, f"{spec.path}: missing"))
            self.report.add("error", spec.key, f"{spec.path} is missing", downloads)
            return
        size = path.stat().st_size
        data, why = read_json_file(path)
        if why:
            self.report.summary.append((spec.key, f"{spec.path}: {_size(size)}, unreadable"))
            self.report.add("error", spec.key, f"{spec.path}: {why}; download it again", downloads)
            return
        if not isinstance(data, list):
            self.report.add("error", spec.key, f"{spec.path}: expected a JSON list of records, got "
                            f"{type(data).__name__}", downloads)
            return
        text = f"{spec.path}: {_size(size)} (LLaVA's: {spec.published_size}), {len(data):,} records"
        if self.sha256:
            text += f", sha256 {sha256_of(path)} (no published sha256 to compare with)"
        if len(data) != spec.records:
            self.report.add("warning", spec.key, f"{spec.path}: {len(data):,} records, LLaVA-1.5's file has "
                            f"{spec.records:,} (a subset, or another version)")
        by_source: dict[str, set[str]] = defaultdict(set)  # distinct images (several records share one)
        text_only = malformed = 0
        for record in data:
            if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
                malformed += 1
                continue
            images = record.get("image")
            if not images:
                text_only += 1
                continue
            for image in [images] if isinstance(images, str) else images:
                by_source[self._source_of(str(image), sources)].add(str(image))
        text += f" ({text_only:,} text-only)"
        self.report.summary.append((spec.key, text))
        if malformed:
            self.report.add("error", spec.key, f"{spec.path}: {malformed:,} records are not LLaVA records "
                            "(an object with a 'conversations' list)")
        image_root = self.root / spec.image_folder
        known = {s.prefix: s for s in sources}
        picks = {prefix: self._pick(sorted(paths)) for prefix, paths in by_source.items()
                 if (image_root / prefix).is_dir()}
        self.progress.add_total(sum(len(p) for p in picks.values()))
        for prefix, paths in sorted(by_source.items()):
            source = known.get(prefix)
            piece = f"{spec.key}:{prefix or 'images'}"
            where = str(Path(spec.image_folder) / prefix) if prefix else spec.image_folder
            download = self._downloads(source.download) if source else []
            if prefix not in picks:
                self.report.summary.append((piece, f"{where}/: missing ({len(paths):,} images referenced)"))
                self.report.add("error", piece, f"{where}/: image folder missing ({len(paths):,} of the records' "
                                "images are there)", download)
                continue
            missing, other_ext = self._missing_images(image_root, picks[prefix])
            self.report.summary.append((piece, f"{where}/: {len(paths):,} images referenced, "
                                               f"{len(picks[prefix]) - len(missing):,}/{len(picks[prefix]):,} "
                                               f"{'checked' if len(picks[prefix]) == len(paths) else 'sampled'} "
                                               "present" + (f"; {source.note}" if source and source.note else "")))
            if missing:
                self._image_problem(piece, where, missing, len(picks[prefix]), len(paths), other_ext, download)

    @staticmethod
    def _source_of(image: str, sources: tuple[L.ImageSource, ...]) -> str:
        for source in sources:  # longest prefixes first where one contains another (VG_100K_2 before VG_100K)
            if source.prefix and image.startswith(source.prefix.rstrip("/") + "/"):
                return source.prefix
        if not any(s.prefix for s in sources):
            return ""
        parts = Path(image).parts
        return str(Path(*parts[:2])) if len(parts) > 2 else (parts[0] if len(parts) > 1 else ".")

    # ------------------------------------------------------------------ evaluation data
    def check_benchmark(self, piece: L.EvalPiece) -> None:
        eval_root = self.root / L.EVAL_DIR
        rel = piece.eval_data(eval_root)  # what the recipe's `eval --data` will read
        data = eval_root / rel
        name = f"eval:{piece.benchmark}"
        downloads = self._downloads(piece.download)
        self._check_question_file(piece, name)
        if not data.exists():
            self.report.summary.append((name, f"{L.EVAL_DIR}/{rel}: missing"))
            self.report.add("error", name, f"{L.EVAL_DIR}/{rel} is missing", downloads)
            return
        if piece.benchmark == "pope" and not self._check_pope(data, name, downloads):
            return
        items = self._load_items(piece, data, rel, name, downloads)
        if items is None:
            return
        images = sorted({path for item in items for path in item.images})
        picked = self._pick(images)
        self.progress.add_total(len(picked))
        missing, other_ext = self._missing_images(Path("/"), [str(Path(p).resolve()) for p in picked])
        self.report.summary.append((name, f"{L.EVAL_DIR}/{rel}: {len(items):,} questions, {len(images):,} "
                                          f"images, {len(picked) - len(missing):,}/{len(picked):,} "
                                          f"{'checked' if len(picked) == len(images) else 'sampled'} present"))
        if missing:
            shown = [str(Path(m).relative_to(eval_root.resolve())) if Path(m).is_relative_to(eval_root.resolve())
                     else m for m in missing]
            self._image_problem(name, f"{L.EVAL_DIR}/{rel} images", shown, len(picked), len(images), other_ext,
                                downloads)

    def _load_items(self, piece: L.EvalPiece, data: Path, rel: str, name: str, downloads: list[str]):
        """The benchmark's own reader (what `eval` will run): its refusal is the problem to report."""
        options = dict(piece.options)
        scratch = None
        if piece.benchmark in ("mmbench", "mmbench_cn"):  # its reader decodes the TSV's images to a cache folder
            scratch = tempfile.TemporaryDirectory(prefix="llm2clip-llava-check-")
            options["image_cache_dir"] = scratch.name
        try:
            return load_benchmark(piece.benchmark, data, **options).load()
        except Exception as e:  # noqa: BLE001 - any refusal of the reader is a finding, named by its message
            message = (str(e).strip().splitlines() or [type(e).__name__])[0]
            self.report.summary.append((name, f"{L.EVAL_DIR}/{rel}: unreadable"))
            self.report.add("error", name, f"the {piece.benchmark} reader refuses {L.EVAL_DIR}/{rel}: {message}",
                            downloads)
            return None
        finally:
            if scratch is not None:
                scratch.cleanup()

    def _check_question_file(self, piece: L.EvalPiece, name: str) -> None:
        if piece.question_file is None:
            return
        path = self.root / L.EVAL_DIR / piece.question_file
        if not path.is_file():
            self.missing_question_files.append(piece.question_file)
            return
        if piece.question_sha256 and sha256_of(path) != piece.question_sha256:
            lines = sum(1 for line in path.open(encoding="utf-8", errors="replace") if line.strip())
            self.report.add("warning", name, f"{L.EVAL_DIR}/{piece.question_file} differs from LLaVA's "
                            f"(sha256; {lines:,} lines, LLaVA's has {piece.question_count:,})")

    def _check_pope(self, data: Path, name: str, downloads: list[str]) -> bool:
        """False when the files are a revision LLaVA did not use (the reader would score another test)."""
        coco = data / "coco" if (data / "coco").is_dir() else data
        ok = True
        for split in L.POPE_SPLITS:
            path = coco / f"coco_pope_{split}.json"
            if not path.is_file():
                continue  # the reader names missing splits
            digest = sha256_of(path)
            if digest == L.POPE_LLAVA.sha256[split]:
                continue
            questions = sum(1 for line in path.open(encoding="utf-8", errors="replace") if line.strip())
            rel = path.relative_to(self.root) if path.is_relative_to(self.root) else path
            later = next((r for r in L.POPE_OTHER_REVISIONS if r.sha256[split] == digest), None)
            if later is not None:
                ok = False
                self.report.add("error", name, f"{rel} is POPE's {later.date} revision ({later.commit}), not the "
                                f"{L.POPE_LLAVA.date} one LLaVA-1.5 evaluated ({L.POPE_LLAVA.commit[:7]}, "
                                f"{L.POPE_LLAVA.random_questions:,} random questions)", downloads)
            elif split == "random" and questions == 3_000:
                ok = False
                self.report.add("error", name, f"{rel} has 3,000 questions: a later POPE revision (the "
                                f"{L.POPE_LLAVA.date} one LLaVA-1.5 evaluated, {L.POPE_LLAVA.commit[:7]}, has "
                                f"{L.POPE_LLAVA.random_questions:,})", downloads)
            else:
                self.report.add("warning", name, f"{rel}: not a POPE revision this check knows ({questions:,} "
                                "questions, sha256 differs from every published revision)")
        return ok


def check_llava_root(root: str | Path, *, benchmarks: list[str] | None = None, training: bool = True,
                     full: bool = False, sample: int = 1000, seed: int = 0, sha256: bool = False,
                     progress: bool = True) -> CheckReport:
    """Check `root` (LLaVA's `playground/data`): both training sets and their image sources, and the eval
    folder for `benchmarks` (default: all of LLaVA-1.5's; `[]`: none)."""
    unknown = sorted(set(benchmarks or ()) - set(L.EVAL_PIECES))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {', '.join(L.EVAL_PIECES)}")
    checker = LayoutChecker(root, full=full, sample=sample, seed=seed, sha256=sha256, progress=progress)
    try:
        if not checker.root.is_dir():
            checker.report.add("error", "root", f"{checker.root} is not a directory")
            return checker.report
        if training:
            checker.check_training_set(L.PRETRAIN, (L.PRETRAIN_IMAGES,))
            checker.check_training_set(L.MIX665K, L.MIX665K_SOURCES)
        for name in L.EVAL_PIECES if benchmarks is None else benchmarks:
            checker.check_benchmark(L.EVAL_PIECES[name])
        checker.report_eval_zip()
    finally:
        checker.progress.close()
    return checker.report
