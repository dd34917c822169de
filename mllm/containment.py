"""What a checkpoint's manifest lists must stay inside the checkpoint directory.

A checkpoint is a directory someone may have downloaded: its `config.json` names the parts to load
(`contents`: projector, tokenizer, adapter, llm, vision_tower). Each is resolved against the directory and
refused, with one line naming the entry, when it is absolute, climbs out with `..`, or is (or contains) a
symlink that leads outside. The base LLM and base tower a checkpoint was trained from are different: they
are explicit external references (a hub id or a path the user chose at training time), reported as such.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import UserError

MAX_FILES_CHECKED = 100_000  # a part holds a few files; a tree this large is not a checkpoint part


class ManifestPathError(UserError, ValueError):
    """A path listed by a checkpoint's manifest leaves the checkpoint directory (or is not a plain path)."""


def _inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def resolve_inside(root: str | os.PathLike, entry, what: str) -> Path:
    """`root / entry` fully resolved (symlinks followed), required to lie inside `root`."""
    if not isinstance(entry, str) or not entry.strip():
        raise ManifestPathError(f"{what} must be a relative path inside the checkpoint, got {entry!r}")
    if "\0" in entry:
        raise ManifestPathError(f"{what} contains a NUL byte")
    if PurePosixPath(entry).is_absolute() or PureWindowsPath(entry).is_absolute() or PureWindowsPath(entry).drive:
        raise ManifestPathError(f"{what} is an absolute path ({entry!r}); parts must lie inside the checkpoint")
    if ".." in PurePosixPath(entry.replace("\\", "/")).parts:
        raise ManifestPathError(f"{what} climbs out of the checkpoint with '..' ({entry!r})")
    base = Path(root).resolve()
    target = (base / entry).resolve()
    if not _inside(base, target):
        raise ManifestPathError(f"{what} ({entry!r}) is a symlink leading out of the checkpoint, to {target}")
    return target


def check_tree(root: str | os.PathLike, path: Path, what: str) -> None:
    """No symlink under `path` (a part directory) leads outside `root`."""
    base = Path(root).resolve()
    if not path.is_dir():
        return
    seen = 0
    for current, dirs, files in os.walk(path, followlinks=False):
        for name in dirs + files:
            seen += 1
            if seen > MAX_FILES_CHECKED:
                raise ManifestPathError(f"{what} holds more than {MAX_FILES_CHECKED} files: not a checkpoint part")
            entry = Path(current) / name
            if entry.is_symlink():
                target = entry.resolve()
                if not _inside(base, target):
                    raise ManifestPathError(
                        f"{what} contains {entry.relative_to(path)}, a symlink leading out of the checkpoint, "
                        f"to {target}")


def describe_reference(value: str | None, revision: str | None = None) -> str:
    """How an external reference (base LLM or tower) reads in logs and banners."""
    if value is None:
        return "none"
    kind = "local path" if os.path.exists(value) or os.path.isabs(value) else "hub id"
    pinned = f" @ {revision}" if revision else ""
    return f"{value}{pinned} (external reference: {kind}, not stored in the checkpoint)"
