"""Output directories of `import`/`export`: refused when they already hold something, written whole or not at all."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .source import InteropError


def check_output_dir(out: str | os.PathLike) -> Path:
    """`out` must not exist yet, or be an empty directory; checked before any model is read."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InteropError(f"{out} already exists and is not empty: choose a new output directory")
    return out


@contextmanager
def staged_output(out: str | os.PathLike):
    """Yield a temporary sibling of `out` to write into; it becomes `out` only when the block completes."""
    out = check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
