"""The project's error vocabulary: which failures are the user's to fix (one line, exit 2) and which are ours.

Every command runs under `mllm.cli.main`, which prints a `UserError` as one line
(`llm2clip-llava <command>: error: <message>`) and exits with status 2; anything else is an internal error
and keeps its traceback. `--verbose` (or `LLM2CLIP_LLAVA_TRACEBACK=1`) shows the traceback of user errors too.

Errors raised by `vision_tower` and `projector` (packages that do not import `mllm`) are registered here as
user errors by class, so those packages stay independent. Errors that a light module raises and a heavy one
catches (or the other way round) live here too, so neither has to import the other for its error class.
"""
from __future__ import annotations

import argparse
import sys

# module -> its exception classes that are user errors (looked up only once the module is imported)
_FOREIGN_USER_ERRORS = {
    "projector.builder": ("ProjectorMismatchError",),
    "vision_tower.checkpoint": ("VisionCheckpointError", "VisionTowerLoadError"),
    "vision_tower.image_io": ("ImageLoadError",),
}


class UserError(Exception):
    """A problem with what the user gave us (a path, an option, a file's contents) that the user can fix."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every exception class the CLI reports as one line: ours plus the tower's and projector's input errors.

    A module that was never imported cannot have raised, so none is imported here: reporting an error found
    before any model loads must not pay for importing torch."""
    found: list[type[BaseException]] = [UserError]
    for module_name, names in _FOREIGN_USER_ERRORS.items():
        module = sys.modules.get(module_name)
        if module is not None:
            found += [getattr(module, name) for name in names]
    return tuple(found)


class TemplateError(ValueError):
    """A conversation that cannot be rendered or masked; ``reason`` is a short category used for counting.

    Raised by `mllm.templates` and `mllm.data.labels`, counted as a skipped sample by the data pipeline."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ImageCountError(ValueError):
    """The number of image placeholders does not match the number of images given.

    Raised by the processor (torch-free) and by the model (`mllm.modeling`)."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose usage errors are `UserError`s: one line from the CLI, not the whole usage block."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")
