"""Command-line glue `chat` and `demo` share: the model-loading flags, the checks run before any weights load,
and loading the model with a one-line error (the Python API is `mllm.chat.api`)."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from .. import checks
from ..errors import user_error_types
from ..generation import GenerationSettings
from .api import ChatModel


def add_model_loading_args(parser) -> None:
    """The --quantization/--dtype/--device/--merge-on-load flags `chat` and `demo` share (read by `load_for_command`)."""
    parser.add_argument("--quantization", default="auto", choices=("auto", "none", "4bit", "8bit"),
                        help="auto = as trained (a QLoRA adapter runs on its 4-bit base when bitsandbytes is installed)")
    parser.add_argument("--dtype", default=None, choices=("auto", "fp32", "bf16", "fp16"),
                        help="compute dtype (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--merge-on-load", action="store_true",
                        help="fold a LoRA/QLoRA adapter into a bf16 copy of its base when loading: more memory "
                             "(7B: ~13.5 GB instead of ~4 GB), faster batched generation")


def check_for_command(args, **settings) -> tuple[Path, dict]:
    """What `chat` and `demo` check before loading anything: the generation flags, the device, and the
    checkpoint (its manifest and every part it lists). Raises a `UserError` (one line, exit 2). Returns the
    checkpoint directory and the settings given (None values dropped: the model's defaults apply, e.g.
    max_new_tokens derived from its context window)."""
    settings = {name: value for name, value in settings.items() if value is not None}
    try:
        generation = GenerationSettings(**settings)
        generation.kwargs()
        # sampling values too, even while greedy: the temperature can be raised later in the session
        dataclasses.replace(generation, temperature=max(generation.temperature, 1.0)).kwargs()
    except ValueError as exc:
        raise checks.OptionError(str(exc)) from exc
    checks.device(args.device)
    directory, _ = checks.checkpoint(args.model)
    return directory, settings


def load_for_command(prog: str, args, **settings) -> tuple["ChatModel | None", int]:
    """What `chat` and `demo` do first: `check_for_command`, then load ``args.model``.

    A bad flag or checkpoint raises a `UserError` before any weights are read (one line, exit 2). Returns
    (model, 0), or (None, 1) after printing why a checkpoint that passed the checks still failed to load."""
    directory, settings = check_for_command(args, **settings)
    try:
        bot = ChatModel.from_pretrained(directory, quantization=args.quantization, dtype=args.dtype,
                                        device=args.device, merge_on_load=getattr(args, "merge_on_load", False))
    except user_error_types():
        raise
    except Exception as exc:  # e.g. unreadable weights
        print(f"{prog}: error: cannot load the model: {type(exc).__name__}: {' '.join(str(exc).split())}",
              file=sys.stderr)
        return None, 1
    bot.default_settings = bot.settings(**settings)
    return bot, 0
