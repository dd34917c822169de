"""`merge`: fold a LoRA/QLoRA adapter into a bf16 copy of the base LLM and write a standalone checkpoint.

LoRA is never merged into 4-bit weights (a known LLaVA/QLoRA failure). For a QLoRA checkpoint the default
base is the *dequantised* NF4 weights the adapter was trained against, so the merged model computes what
the trained one did; `--base original` merges into the original bf16/fp32 weights instead.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import checks
from .config import MLLMConfig
from .containment import describe_reference
from .errors import UserError
from .llm import DTYPES, load_merged_llm
from .serialization import copy_checkpoint_parts

logger = logging.getLogger(__name__)


class MergeError(UserError, ValueError):
    """A merge that cannot be done as asked (no adapter, wrong base, an output that would overwrite something)."""


def check_merge(checkpoint: str | Path, output: str | Path, dtype: str, base: str) -> tuple[MLLMConfig, str]:
    """Everything `merge` needs, checked before the LLM loads: (manifest, the base actually used)."""
    checkpoint, output = Path(checkpoint), Path(output)
    if dtype not in DTYPES:
        raise MergeError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if base not in ("auto", "original", "dequantized"):
        raise MergeError(f"base must be auto, original or dequantized, got {base!r}")
    _, manifest = checks.checkpoint(checkpoint)
    if "adapter" not in manifest.contents:
        raise MergeError(f"{checkpoint} has no LoRA adapter to merge (contents: {sorted(manifest.contents)})")
    if base == "auto":
        base = "dequantized" if manifest.quantization == "4bit" else "original"
    if base == "dequantized" and manifest.quantization != "4bit":
        raise MergeError("--base dequantized applies to checkpoints trained on a 4-bit base (QLoRA)")
    if output.resolve() == checkpoint.resolve() or checkpoint.resolve() in output.resolve().parents:
        raise MergeError(f"output {output} is inside the checkpoint {checkpoint}; choose a directory outside it")
    checks.output_dir(output, "output", must_be_empty=True)
    return manifest, base


def merge_checkpoint(checkpoint: str | Path, output: str | Path, *, dtype: str = "bf16", base: str = "auto") -> Path:
    """Write `output` (a new or empty directory): the checkpoint with its adapter merged into full LLM weights."""
    checkpoint, output = Path(checkpoint), Path(output)
    manifest, base = check_merge(checkpoint, output, dtype, base)
    listed = manifest.parts(checkpoint)
    llm_source = manifest.resolve_path(checkpoint, manifest.llm)
    logger.info("base LLM: %s", describe_reference(llm_source, manifest.llm_revision))
    merged = load_merged_llm(llm_source, str(listed["adapter"]), base=base, dtype=DTYPES[dtype],
                             revision=manifest.llm_revision)
    output.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output / "llm", safe_serialization=True)
    parts = [p for k, p in manifest.contents.items() if k not in ("adapter", "llm")]
    copy_checkpoint_parts(checkpoint, output, parts)
    manifest.contents = {k: v for k, v in manifest.contents.items() if k != "adapter"} | {"llm": "llm"}
    manifest.quantization = None
    manifest.llm_revision = None  # the merged weights are in the checkpoint now
    manifest.extra = {**manifest.extra, "merged_from": str(checkpoint), "merge_base": base, "merge_dtype": dtype}
    manifest.save(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llm2clip-llava merge",
        description="Merge a LoRA/QLoRA checkpoint into a standalone checkpoint with full bf16 LLM weights.",
    )
    parser.add_argument("checkpoint", help="checkpoint directory with an adapter (output of finetune)")
    parser.add_argument("output", help="directory to write the merged checkpoint to")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="weight dtype (default bf16)")
    parser.add_argument(
        "--base", default="auto", choices=["auto", "original", "dequantized"],
        help="weights to merge into: the dequantised 4-bit base the adapter was trained on (auto for QLoRA) "
             "or the original base weights",
    )
    args = parser.parse_args(argv)
    check_merge(args.checkpoint, args.output, args.dtype, args.base)  # one line, exit 2, before any loading
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = merge_checkpoint(args.checkpoint, args.output, dtype=args.dtype, base=args.base)
    print(f"merged {args.checkpoint} -> {out} ({args.dtype}, base={args.base})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
