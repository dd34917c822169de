"""How every Hugging Face load is made: never run code shipped with a checkpoint, pin a revision when asked.

A tokenizer or model config may carry `auto_map`, naming Python files of its own for transformers to import.
Left to its default, transformers asks on the terminal whether to run them, and a "y" (or a script piping
"y") runs the checkpoint's code. Every load here passes `trust_remote_code=False`: a checkpoint whose class
transformers knows loads with transformers' own code, one that needs its own code is refused with one line.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


class RemoteCodeRefusedError(UserError):
    """A checkpoint asks transformers to import Python files it ships (`auto_map`); we never do."""


def pretrained_kwargs(revision: str | None = None) -> dict:
    """The keyword arguments of every `from_pretrained` call: no remote code, and the revision if one is pinned
    (a branch, tag or commit of a hub repository; ignored by transformers for local directories)."""
    kwargs: dict = {"trust_remote_code": False}
    if revision:
        kwargs["revision"] = revision
    return kwargs


@contextmanager
def refusing_remote_code(source: str | Path, what: str):
    """Turn transformers' "this repository contains custom code" refusal into one line naming `source`."""
    try:
        yield
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise RemoteCodeRefusedError(
            f"refusing to load the {what} at {source}: it asks to run Python code shipped with it (auto_map), and "
            f"this package never runs checkpoint code (trust_remote_code=False); use a checkpoint whose "
            f"architecture transformers supports natively"
        ) from exc


def load_tokenizer(source: str | Path, revision: str | None = None):
    """`AutoTokenizer.from_pretrained` without remote code; a missing or unreadable tokenizer is a user error."""
    from transformers import AutoTokenizer

    with refusing_remote_code(source, "tokenizer"):
        try:
            return AutoTokenizer.from_pretrained(str(source), **pretrained_kwargs(revision))
        except OSError as exc:
            raise TokenizerLoadError(f"could not load a tokenizer from {str(source)!r}: {exc}") from exc


class TokenizerLoadError(UserError, OSError):
    """No tokenizer at the given place (kept an OSError for callers that catch those)."""


class LLMLoadError(UserError, OSError):
    """No LLM at the given place: not a local model directory, and no such hub repo reachable (an OSError too)."""
