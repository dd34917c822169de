"""``llm2clip-llava validate``: scan a LLaVA-format dataset and report problems, without training.

Runs every record through the same path as training (record checks, template, labels and their consistency
check, truncation, image decoding) and prints counts per skip reason with examples, a token-length
histogram, and the shares of truncated and text-only samples. ``--strict`` stops at the first problem and
exits 1, naming the record; otherwise the exit code is 0 and the report says what would be skipped.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from torch.utils.data import DataLoader, Dataset

from projector.registry import UnknownProjectorError, image_token_count, projector_class
from vision_tower import ImageProcessor
from vision_tower.config import DEFAULT_PRESET, PRESETS

from .. import checks
from ..checks import OptionError
from ..hub import load_tokenizer
from ..templates import TEMPLATES
from ..tokenization import add_image_token
from .dataset import LLaVADataset
from .report import DataError, SkippedSample, SkipReport

EDGES = [0, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, 8192]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm2clip-llava validate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="LLaVA JSON (a list) or JSONL file")
    p.add_argument("--image-folder", default=None, help="root that the records' image paths are relative to")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (or hub id) of the LLM")
    p.add_argument("--template", default="vicuna_v1", choices=sorted(TEMPLATES))
    p.add_argument("--max-length", type=int, default=2048, help="model_max_length after image expansion (default 2048)")
    p.add_argument("--num-image-tokens", type=int, default=576, help="placeholders per image (default 576)")
    p.add_argument("--tower", default=None, help="vision tower preset; sets --num-image-tokens from its patch grid "
                   "and --projector-type")
    p.add_argument("--projector-type", default="mlp2x_gelu",
                   help="projector type that turns the --tower grid into LLM tokens (default mlp2x_gelu)")
    p.add_argument("--strict", action="store_true", help="stop at the first problem and exit 1")
    p.add_argument("--limit", type=int, default=None, help="only the first N records")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--process-images", action="store_true", help="also run the image preprocessing, not only decoding")
    p.add_argument("--json-out", default=None, help="write the report as JSON here")
    return p


class _ScanView(Dataset):
    """Per record, only what the report needs (keeps worker-to-main traffic small)."""

    def __init__(self, dataset: LLaVADataset, process_images: bool):
        self.dataset, self.process_images = dataset, process_images

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset.get(i, with_pixels=self.process_images)
        if isinstance(item, SkippedSample):
            return item
        keys = ("num_images", "full_length", "truncated", "dropped_leading_assistant")
        return {k: item[k] for k in keys} | {"supervised": int((item["labels"] != -100).sum())}


def _unbatched(item):
    return item


def histogram(lengths: list[int]) -> list[dict]:
    counts = Counter()
    for n in lengths:
        bin_ = max(i for i, e in enumerate(EDGES) if n >= e)
        counts[bin_] += 1
    return [
        {"from": EDGES[i], "to": EDGES[i + 1] - 1 if i + 1 < len(EDGES) else None, "count": counts[i]}
        for i in range(len(EDGES))
        if counts[i]
    ]


def scan(dataset: LLaVADataset, workers: int = 0, process_images: bool = False) -> dict:
    """Run every record through the training path; return the report as a dict."""
    report = SkipReport()
    loader = DataLoader(_ScanView(dataset, process_images), batch_size=None, num_workers=workers, collate_fn=_unbatched)
    lengths, images, truncated, text_only, multi_image, dropped, supervised = [], 0, 0, 0, 0, 0, 0
    for item in loader:
        if isinstance(item, SkippedSample):
            report.add(item)
            continue
        lengths.append(item["full_length"])
        images += item["num_images"]
        text_only += item["num_images"] == 0
        multi_image += item["num_images"] > 1
        truncated += bool(item["truncated"])
        dropped += bool(item["dropped_leading_assistant"])
        supervised += item["supervised"]
    kept = len(lengths)
    share = (lambda n: n / kept) if kept else (lambda n: 0.0)
    return {
        "data": dataset.records.path,
        "format": dataset.records.format,
        "records": len(dataset),
        "template": dataset.template,
        "max_length": dataset.max_length,
        "num_image_tokens": dataset.num_image_tokens,
        "kept": kept,
        "skipped": report.total,
        "skip_counts": report.counts,
        "skip_report": report.to_dict(),
        "images": images,
        "text_only": text_only,
        "share_text_only": share(text_only),
        "multi_image": multi_image,
        "truncated": truncated,
        "share_truncated": share(truncated),
        "dropped_leading_gpt_turn": dropped,
        "supervised_tokens": supervised,
        "length_histogram": histogram(lengths),
        "length_max": max(lengths, default=0),
        "length_mean": sum(lengths) / kept if kept else 0.0,
        "_report": report,
    }


def format_report(result: dict) -> str:
    pct = lambda n, d: f"{100.0 * n / d:.2f}%" if d else "n/a"  # noqa: E731
    lines = [
        f"validate: {result['data']} ({result['format']}, {result['records']} records), template {result['template']}, "
        f"max_length {result['max_length']}, {result['num_image_tokens']} tokens per image",
        f"kept {result['kept']} ({pct(result['kept'], result['records'])}), skipped {result['skipped']}",
        result["_report"].summary(result["records"]),
        f"text-only {result['text_only']} ({pct(result['text_only'], result['kept'])}), images {result['images']}, "
        f"multi-image samples {result['multi_image']}",
        f"truncated {result['truncated']} ({pct(result['truncated'], result['kept'])}), "
        f"leading gpt turn dropped {result['dropped_leading_gpt_turn']}, supervised tokens {result['supervised_tokens']}",
        f"token length after image expansion (mean {result['length_mean']:.1f}, max {result['length_max']}):",
    ]
    peak = max((b["count"] for b in result["length_histogram"]), default=1)
    for b in result["length_histogram"]:
        to = "..." if b["to"] is None else f"{b['to']:>5}"
        lines.append(f"  {b['from']:>5}-{to}  {'#' * max(1, round(40 * b['count'] / peak)):<40} {b['count']}")
    return "\n".join(lines)


def _num_image_tokens(args) -> int:
    if args.tower is None:
        return args.num_image_tokens

    grid = PRESETS[args.tower].grid_size
    return image_token_count(args.projector_type, (grid, grid))


def check_options(args) -> None:
    """Paths and values, checked before the tokenizer loads or any record is read (`UserError`: one line, exit 2)."""
    checks.existing_file(args.data, "--data")
    if args.image_folder is not None:
        checks.existing_dir(args.image_folder, "--image-folder")
    if args.tower is not None and args.tower not in PRESETS:
        raise checks.OptionError(f"unknown --tower preset {args.tower!r}; known: {', '.join(PRESETS)}")
    try:
        projector_class(args.projector_type)
    except UnknownProjectorError as exc:
        raise checks.OptionError(f"--projector-type: {exc}") from exc
    try:
        _num_image_tokens(args)  # the projector's own check against the tower's grid (k must divide it)
    except ValueError as exc:
        raise checks.OptionError(f"--projector-type: {exc}") from exc
    checks.at_least("--max-length", args.max_length, 1)
    checks.at_least("--num-image-tokens", args.num_image_tokens, 1)
    checks.at_least("--limit", args.limit, 1)
    checks.at_least("--workers", args.workers, 0)
    if args.json_out:
        checks.output_file(args.json_out, "--json-out")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_options(args)

    tokenizer = load_tokenizer(args.tokenizer)
    image_token_id = add_image_token(tokenizer)
    try:
        dataset = LLaVADataset(
            args.data, tokenizer, template=args.template, image_folder=args.image_folder,
            num_image_tokens=_num_image_tokens(args), image_token_id=image_token_id, max_length=args.max_length,
            strict=args.strict, limit=args.limit, image_processor=_processor(args) if args.process_images else None,
        )  # fmt: skip
    except (OSError, ValueError) as exc:  # an unreadable or malformed data file, a template the tokenizer lacks
        raise OptionError(str(exc)) from exc
    try:
        result = scan(dataset, args.workers, args.process_images)
    except DataError as exc:
        print(f"llm2clip-llava validate: --strict: {exc}", file=sys.stderr)
        return 1
    print(format_report(result))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({k: v for k, v in result.items() if not k.startswith("_")}, f, indent=2)
    return 0


def _processor(args):
    cfg = PRESETS[args.tower or DEFAULT_PRESET]
    return ImageProcessor(cfg.image_size, cfg.image_mean, cfg.image_std, image_aspect_ratio="pad")


if __name__ == "__main__":
    sys.exit(main())
