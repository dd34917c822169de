"""Cheap checks every command runs on its arguments before anything heavy (a model, a dataset scan) starts.

Each raises `OptionError` (a `UserError`): the CLI prints it as one line and exits 2, within a second of the
command starting, instead of after minutes of loading or with a traceback from deep inside a library.
"""
from __future__ import annotations

import os
from pathlib import Path

from .config import MLLMConfig
from .errors import UserError
from .paths import resolve_model_dir


class OptionError(UserError, ValueError):
    """A command-line value the user can fix: a path that is not there, an unusable output dir, a bad number."""


def existing_path(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise OptionError(f"{what} {str(path)!r} does not exist")
    return p


def existing_file(path: str | os.PathLike, what: str) -> Path:
    p = existing_path(path, what)
    if not p.is_file():
        raise OptionError(f"{what} {str(path)!r} is not a file")
    return p


def existing_dir(path: str | os.PathLike, what: str) -> Path:
    p = existing_path(path, what)
    if not p.is_dir():
        raise OptionError(f"{what} {str(path)!r} is not a directory")
    return p


def output_dir(path: str | os.PathLike, what: str, *, must_be_empty: bool = False) -> Path:
    """A directory we may write into: an existing writable directory (empty, if asked), or one that can be
    created (its nearest existing parent is a writable directory). Nothing is created here."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise OptionError(f"{what} {str(path)!r} exists and is not a directory")
        if must_be_empty and any(p.iterdir()):
            raise OptionError(f"{what} {str(path)!r} is not empty; choose a new directory (nothing was written)")
        if not os.access(p, os.W_OK | os.X_OK):
            raise OptionError(f"{what} {str(path)!r} is not writable")
        return p
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OptionError(f"{what} {str(path)!r} cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OptionError(f"{what} {str(path)!r} cannot be created: {parent} is not writable")
    return p


def output_file(path: str | os.PathLike, what: str) -> Path:
    """A file we may (over)write: not a directory, and its directory exists or can be created."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise OptionError(f"{what} {str(path)!r} is a directory")
    output_dir(p.absolute().parent, f"the directory of {what}")
    return p


def at_least(name: str, value, minimum) -> None:
    if value is not None and value < minimum:
        raise OptionError(f"{name} must be >= {minimum}, got {value}")


def port(value: int, what: str = "--port") -> None:
    if not 1 <= value <= 65535:
        raise OptionError(f"{what} must be between 1 and 65535, got {value}")


def device(value: str | None, what: str = "--device"):
    """A torch device string that exists on this machine (None: the command's default)."""
    if value is None:
        return None
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError) as exc:
        raise OptionError(f"{what} {value!r} is not a device (cpu, cuda, cuda:1, mps ...)") from exc
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise OptionError(f"{what} {value!r}: no CUDA device is available here")
        if dev.index is not None and dev.index >= count:
            raise OptionError(f"{what} {value!r}: this machine has {count} CUDA device(s)")
    return dev


def checkpoint(model: str | os.PathLike | None):
    """(directory, manifest) of a checkpoint argument (None: the quickstart's), with every listed part checked
    present and inside the directory — before any weights are read."""
    directory = resolve_model_dir(model)
    if not directory.exists():
        raise OptionError(f"checkpoint {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise OptionError(f"checkpoint {str(directory)!r} is not a directory (a checkpoint is a directory with "
                          f"config.json)")
    return directory, MLLMConfig.load(directory)
