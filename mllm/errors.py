"""The project's error vocabulary: which failures are the user's to fix (one line, exit 2) and which are ours.

Every command runs under `mllm.cli.main`, which prints a `UserError` as one line
(`llm2clip-llava <command>: error: <message>`) and exits with status 2; anything else is an internal error
and keeps its traceback. `--verbose` (or `LLM2CLIP_LLAVA_TRACEBACK=1`) shows the traceback of user errors too.

Errors raised by `vision_tower` and `projector` (packages that do not import `mllm`) are registered here as
user errors by class, so those packages stay independent.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave us (a path, an option, a file's contents) that the user can fix."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every exception class the CLI reports as one line: ours plus the tower's and projector's input errors."""
    from projector.builder import ProjectorMismatchError
    from vision_tower.checkpoint import VisionCheckpointError, VisionTowerLoadError
    from vision_tower.image_io import ImageLoadError

    return (UserError, ProjectorMismatchError, VisionCheckpointError, VisionTowerLoadError, ImageLoadError)
