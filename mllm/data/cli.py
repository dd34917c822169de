"""``llm2clip-llava data``: check a data root in a known layout, or list where its pieces come from.

  llm2clip-llava data check --layout llava playground/data            # exit 1 when anything is broken
  llm2clip-llava data check --layout llava playground/data --full     # every image, not a sample per source
  llm2clip-llava data sources --layout llava playground/data          # the download commands, nothing checked
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import UserError
from . import llava_layout as L
from .layout_check import check_llava_root

LAYOUTS = ("llava",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm2clip-llava data", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="action", required=True)
    check = sub.add_parser(
        "check", help="verify a data root: files, record counts, images per source, sizes, checksums, versions",
        description="Verify a LLaVA-1.5 data root (LLaVA's ./playground/data): LLaVA-Pretrain 558K and its images, "
                    "llava_v1_5_mix665k.json and its COCO/GQA/OCR-VQA/TextVQA/VG images, and the eval folder "
                    "(each benchmark read by the reader `eval` uses, POPE's revision, eval.zip's question files). "
                    "One line per problem; exit status 1 when there is an error (or a warning, with --strict).")
    check.add_argument("root", help="the data root (LLaVA's ./playground/data)")
    check.add_argument("--layout", required=True, choices=LAYOUTS, help="the layout to check against")
    check.add_argument("--full", action="store_true", help="check every image instead of a sample per source")
    check.add_argument("--sample", type=int, default=1000, help="images checked per source (default 1000)")
    check.add_argument("--seed", type=int, default=0, help="which images the sample picks")
    check.add_argument("--benchmarks", default=None,
                       help="comma-separated benchmarks to check in eval/ (default: all of LLaVA-1.5's; 'none')")
    check.add_argument("--no-training", action="store_true", help="skip the training sets")
    check.add_argument("--sha256", action="store_true",
                       help="also hash the training JSONs (POPE and eval.zip files are always hashed)")
    check.add_argument("--strict", action="store_true", help="warnings fail the check too")
    check.add_argument("--json-out", default=None, help="also write the report as JSON here")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    sources = sub.add_parser("sources", help="print where every piece comes from and how to download it")
    sources.add_argument("root", nargs="?", default="playground/data", help="the data root the commands write to")
    sources.add_argument("--layout", required=True, choices=LAYOUTS)
    return p


def _benchmarks(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [] if text.strip().lower() == "none" else [b.strip() for b in text.split(",") if b.strip()]


def print_sources(root: str) -> None:
    def block(title: str, lines: tuple[str, ...], extra: str = "") -> None:
        print(f"# {title}" + (f" ({extra})" if extra else ""))
        for line in L.commands(lines, root):
            print(line)
        print()

    for spec in L.TRAINING_SETS:
        block(f"{spec.key}: {spec.path}", spec.download, f"{spec.records:,} records, {spec.published_size}")
    for source in L.MIX665K_SOURCES:
        block(f"{L.MIX665K.key} images: {source.prefix} ({source.name})", source.download, source.note)
    block("eval: LLaVA's eval.zip", (L.EVAL_ZIP,))
    for piece in L.EVAL_PIECES.values():
        block(f"eval: {piece.benchmark} -> {L.EVAL_DIR}/{piece.data}", piece.download)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "sources":
        print_sources(args.root)
        return 0
    if not Path(args.root).is_dir():
        raise UserError(f"{args.root} is not a directory")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        report = check_llava_root(args.root, benchmarks=_benchmarks(args.benchmarks), training=not args.no_training,
                                  full=args.full, sample=args.sample, seed=args.seed, sha256=args.sha256,
                                  progress=not args.no_progress)
    except ValueError as e:
        raise UserError(str(e)) from e
    print(report.render())
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    failed = bool(report.errors) or (args.strict and bool(report.warnings))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
