"""The `llm2clip-llava` console script: one entry point, one subcommand per job.

Each subcommand lives in its own module and exposes ``main(argv) -> int``; modules are imported only when
their command runs, so `llm2clip-llava --help` stays fast and a missing optional dependency of one command
cannot break the others.
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback

from .errors import user_error_types
from .quiet import silence_known_warnings

# name -> (module exposing main(argv), one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("mllm.quickstart.run", "Generate synthetic data, train a tiny model end to end on the CPU, report."),
    "pretrain": ("mllm.train.cli", "Stage 1: train the projector on image-caption pairs (template `plain`)."),
    "finetune": ("mllm.train.cli", "Stage 2: visual instruction tuning (QLoRA, LoRA or full)."),
    "validate": ("mllm.data.validate", "Scan a LLaVA-format dataset and report problems without training."),
    "data": ("mllm.data.cli", "Check a LLaVA-1.5 data root (files, counts, images, versions); list downloads."),
    "chat": ("mllm.chat.cli", "Interactive multi-turn chat about an image in the terminal."),
    "demo": ("demo.app", "Start the Gradio chat demo (binds 127.0.0.1 by default)."),
    "eval": ("mllm.eval.cli", "Evaluate a checkpoint on a benchmark (LLaVA-1.5 protocol)."),
    "compare": ("mllm.eval.compare", "Compare metrics JSONs: markdown table and bar chart."),
    "reproduce": ("mllm.recipe.cli", "The paper's experiment: both towers, stage 1 -> stage 2 -> benchmarks -> compare."),
    "merge": ("mllm.merge", "Merge a LoRA checkpoint into a standalone bf16 model."),
    "import": ("mllm.interop.cli", "Convert a LLaVA or llava-hf checkpoint into an llm2clip-llava checkpoint."),
    "export": ("mllm.interop.cli", "Write a checkpoint (CLIP tower) in the llava-hf format for transformers/vLLM/SGLang."),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: llm2clip-llava <command> [options]",
        "",
        "Train, chat with and evaluate a LLaVA-style model with the LLM2CLIP EVA02 vision tower.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run `llm2clip-llava <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"llm2clip-llava: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2

    silence_known_warnings()  # before the command imports the libraries that warn at import time
    module = importlib.import_module(COMMANDS[name][0])

    try:
        # A module serving several commands (pretrain/finetune) receives the command name first.
        if getattr(module, "MULTI_COMMAND", False):
            return int(module.main([name, *rest]) or 0)
        return int(module.main(rest) or 0)
    except user_error_types() as exc:
        if "--verbose" in rest or "-v" in rest or os.environ.get("LLM2CLIP_LLAVA_TRACEBACK") == "1":
            traceback.print_exc()
        message = " ".join(str(exc).split())  # one line, whatever the message (a library's may span several)
        print(f"llm2clip-llava {name}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
