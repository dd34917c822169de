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

from .config import MLLMConfig
from .llm import DTYPES, load_merged_llm
from .serialization import copy_checkpoint_parts

logger = logging.getLogger(__name__)


def merge_checkpoint(checkpoint: str | Path, output: str | Path, *, dtype: str = "bf16", base: str = "auto") -> Path:
    """Write `output`: the checkpoint with its adapter merged into full LLM weights (`llm/`)."""
    checkpoint, output = Path(checkpoint), Path(output)
    manifest = MLLMConfig.load(checkpoint)
    if "adapter" not in manifest.contents:
        raise ValueError(f"{checkpoint} has no LoRA adapter to merge (contents: {sorted(manifest.contents)})")
    if base not in ("auto", "original", "dequantized"):
        raise ValueError(f"base must be auto, original or dequantized, got {base!r}")
    if base == "auto":
        base = "dequantized" if manifest.quantization == "4bit" else "original"
    if base == "dequantized" and manifest.quantization != "4bit":
        raise ValueError("--base dequantized applies to checkpoints trained on a 4-bit base (QLoRA)")
    llm_source = manifest.resolve_path(checkpoint, manifest.llm)
    merged = load_merged_llm(llm_source, str(checkpoint / manifest.contents["adapter"]), base=base,
                             dtype=DTYPES[dtype])
    output.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output / "llm", safe_serialization=True)
    parts = [p for k, p in manifest.contents.items() if k not in ("adapter", "llm")]
    copy_checkpoint_parts(checkpoint, output, parts)
    manifest.contents = {k: v for k, v in manifest.contents.items() if k != "adapter"} | {"llm": "llm"}
    manifest.quantization = None
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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = merge_checkpoint(args.checkpoint, args.output, dtype=args.dtype, base=args.base)
    print(f"merged {args.checkpoint} -> {out} ({args.dtype}, base={args.base})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
