"""Crash-safe directory publishing: what a checkpoint write and the final model save are built from.

A directory is written under a temporary name, every file in it is fsynced, then the directory itself, and
only then is it renamed into place (and the parent fsynced). Replacing an existing directory goes
rename-aside → swap → delete, so at every instant either the old or the new copy is complete under a name
that recovery (`mllm.train.rundir`) understands. Deleting goes rename-to-trash → delete, so a half-deleted
checkpoint never keeps its real name.

Every function takes an optional `step_hook(name)`, called after each durable step; tests use it to stop the
process between steps. Torch-free: the command line's fail-fast checks import this module.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

StepHook = Callable[[str], None] | None


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable; a no-op where the OS cannot open directories."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_tree(root: Path) -> None:
    """fsync every file below `root`, then every directory bottom-up (the root last)."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(directory, name)
            if not path.is_symlink():
                fsync_file(path)
        fsync_dir(Path(directory))


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file so that readers see the old or the new content, never a prefix."""
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _step(hook: StepHook, name: str) -> None:
    if hook is not None:
        hook(name)


def remove_tree(path: Path, trash: Path, step_hook: StepHook = None) -> None:
    """Delete a directory so that a crash midway leaves it under `trash`, not under its own name."""
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(path, trash)
    fsync_dir(path.parent)
    _step(step_hook, "renamed_for_deletion")
    shutil.rmtree(trash)


def publish_dir(tmp: Path, final: Path, aside: Path, step_hook: StepHook = None) -> None:
    """Make the fully written `tmp` appear as `final`: fsync it, then swap it in (rename-aside, swap, delete)."""
    fsync_tree(tmp)
    _step(step_hook, "synced")
    if final.exists():
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(final, aside)
        fsync_dir(final.parent)
        _step(step_hook, "old_moved_aside")
    os.replace(tmp, final)
    fsync_dir(final.parent)
    _step(step_hook, "swapped")
    if aside.exists():
        shutil.rmtree(aside)
        _step(step_hook, "old_deleted")


def move_entries(names: Iterable[str], source: Path, target: Path) -> None:
    """Rename entries of `source` into `target` (created); missing ones are skipped."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (source / name).exists():
            os.replace(source / name, target / name)
    fsync_dir(source)
    fsync_dir(target)
