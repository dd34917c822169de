"""`llm2clip-llava import` and `llm2clip-llava export`: move models between LLaVA's formats and ours."""
from __future__ import annotations

import argparse
import logging
import sys

from vision_tower.config import IMAGE_ASPECT_RATIOS

from ..llm import DTYPES

MULTI_COMMAND = True  # mllm.cli passes the command name first

IMPORT_EPILOG = """examples:
  llm2clip-llava import liuhaotian/llava-v1.5-7b runs/llava-v1.5-7b          # LLaVA's own format
  llm2clip-llava import llava-hf/llava-1.5-7b-hf runs/llava-1.5-7b-hf --image-aspect-ratio pad
  llm2clip-llava import llava-v1.5-7b-lora runs/lora --model-base lmsys/vicuna-7b-v1.5
  llm2clip-llava import ./llava-ckpt runs/llava --tower ./clip-vit-large-patch14-336   # offline tower copy
then: llm2clip-llava chat --model runs/llava-v1.5-7b --image photo.jpg"""

EXPORT_EPILOG = """examples:
  llm2clip-llava export runs/finetune exported/llava-clip-7b --format llava-hf
  python -c "from transformers import AutoProcessor, LlavaForConditionalGeneration as L; L.from_pretrained('exported/llava-clip-7b')"
  vllm serve exported/llava-clip-7b      # chat requests need "add_special_tokens": true (see README)"""


def build_import_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm2clip-llava import", epilog=IMPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a LLaVA checkpoint (LLaVA's own LlavaLlamaForCausalLM/LlavaMistralForCausalLM format, "
                    "full, LoRA or projector-only; or llava-hf's LlavaForConditionalGeneration) into an llm2clip-llava "
                    "checkpoint that chat, demo, eval and finetune --init_from use. Nothing is written unless "
                    "every tensor fits.")
    parser.add_argument("source", help="checkpoint directory or Hugging Face Hub id")
    parser.add_argument("output", help="new directory for the converted checkpoint (must not exist or be empty)")
    parser.add_argument("--format", default="auto", choices=("auto", "llava", "llava-hf"),
                        help="source format (default: recognised from config.json)")
    parser.add_argument("--tower", help="LLaVA format: where the vision tower comes from (hub id or local directory), "
                                        "instead of the tower weights in the checkpoint or its mm_vision_tower")
    parser.add_argument("--model-base", help="LLaVA format: the base LLM of a LoRA or projector-only checkpoint")
    parser.add_argument("--template", choices=("vicuna_v1", "plain", "chat_template"),
                        help="conversation template (default: vicuna_v1, LLaVA-1.5's; plain for a projector-only "
                             "checkpoint; what an llm2clip-llava export recorded)")
    parser.add_argument("--image-aspect-ratio", choices=IMAGE_ASPECT_RATIOS,
                        help="image preprocessing (default: the source's; note llava-hf's LLaVA-1.5 processors "
                             "crop where LLaVA-1.5 was trained with pad)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                        help="weight dtype to write (default auto: as stored)")
    parser.add_argument("--verbose", "-v", action="store_true", help="tracebacks for errors")
    return parser


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm2clip-llava export", epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write an llm2clip-llava checkpoint with a CLIP-architecture tower in the llava-hf format "
                    "(LlavaForConditionalGeneration + LlavaProcessor), which transformers, vLLM, SGLang and TGI load "
                    "without this package. LoRA/QLoRA adapters are merged first, as `merge` does (QLoRA: into the "
                    "dequantised NF4 weights; `merge --base original` first for the original ones). EVA02 towers "
                    "cannot be expressed in that format and are refused.")
    parser.add_argument("checkpoint", help="llm2clip-llava checkpoint directory")
    parser.add_argument("output", help="new directory for the exported model (must not exist or be empty)")
    parser.add_argument("--format", default="llava-hf", choices=("llava-hf",), help="target format (default llava-hf)")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="weight dtype (default bf16)")
    parser.add_argument("--verbose", "-v", action="store_true", help="tracebacks for errors")
    return parser


def run_import(argv: list[str]) -> int:
    args = build_import_parser().parse_args(argv)
    from .importer import import_checkpoint  # the conversion code (transformers) loads once the arguments parse

    output, model = import_checkpoint(
        args.source, args.output, format=args.format, dtype=None if args.dtype == "auto" else DTYPES[args.dtype],
        tower=args.tower, model_base=args.model_base, template=args.template,
        image_aspect_ratio=args.image_aspect_ratio)
    print(f"imported {args.source} -> {output}")
    for line in model.summary():
        print(f"  {line}")
    return 0


def run_export(argv: list[str]) -> int:
    args = build_export_parser().parse_args(argv)
    from .export_hf import export_checkpoint  # likewise

    output, summary = export_checkpoint(args.checkpoint, args.output, format=args.format, dtype=args.dtype)
    print(f"exported {args.checkpoint} -> {output}")
    for line in summary:
        print(f"  {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("import", "export"):
        print("usage: python -m mllm.interop.cli {import,export} ...", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return (run_import if argv[0] == "import" else run_export)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
