"""Where things live by default: the quickstart writes its model where chat, demo and eval look first."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

HOME_ENV = "LLM2CLIP_LLAVA_HOME"


def home() -> Path:
    """`$LLM2CLIP_LLAVA_HOME`, else `~/.cache/llm2clip-llava`."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "llm2clip-llava").expanduser()


def quickstart_dir() -> Path:
    return home() / "quickstart"


def default_model_dir() -> Path:
    """The quickstart's final checkpoint: the model `chat`, `demo` and `eval` use when none is given."""
    return quickstart_dir() / "model"


class NoModelError(UserError, FileNotFoundError):
    """No checkpoint given and none at the default place."""


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    """`model` if given, else the quickstart checkpoint; a clear error when neither exists."""
    if model is not None:
        return Path(model).expanduser()
    path = default_model_dir()
    if not (path / "config.json").is_file():
        raise NoModelError(
            f"no model given and no quickstart checkpoint at {path}: run `llm2clip-llava quickstart` first "
            f"(or pass --model DIR, or set {HOME_ENV})"
        )
    return path
