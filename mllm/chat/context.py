"""How a conversation meets the model's context window: the answer's token budget and, only when needed,
trimming of the oldest history. One implementation for the Python API, the terminal chat and the demo.

- The answer may use min(max_new_tokens, the room the prompt leaves): a long `max_new_tokens` never pushes
  history out of the window.
- History is trimmed only when the prompt leaves less than a minimal answer reserve,
  min(max_new_tokens, context // 8); then the oldest exchanges go first, the question always stays.
- Trimming never drops an image: the `<image>` markers of dropped turns move, in order, to the start of the
  first kept user turn (the image list keeps its order).
- A question that does not fit even alone raises `ContextOverflowError`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..constants import IMAGE_TOKEN

USER_ROLES = ("human", "user")
RESERVE_FRACTION = 8  # the minimal answer reserve is 1/8 of the context (capped by max_new_tokens)


class ContextOverflowError(ValueError):
    """The question (with its image) does not fit in the model's context window, even without history."""


def default_max_new_tokens(context_length: int | None) -> int:
    """Default answer length: a quarter of the context window, between 16 and 1024 tokens (512 for LLaVA-1.5's
    2048; 128 for the quickstart's 512). Unknown context: 512."""
    if not context_length:
        return 512
    return max(16, min(1024, context_length // 4))


def answer_reserve(context_length: int, max_new_tokens: int) -> int:
    """Tokens the prompt must leave for the answer before history is trimmed."""
    return max(1, min(max_new_tokens, context_length // RESERVE_FRACTION))


@dataclass(frozen=True)
class ContextFit:
    """What is sent: `turns` (LLaVA JSON), the answer's budget, and how many oldest exchanges were left out."""

    turns: list[dict]
    max_new_tokens: int
    prompt_tokens: int
    dropped: int = 0  # exchanges (a user turn with its answers) dropped from the start of the history
    dropped_questions: tuple[str, ...] = ()
    context_length: int | None = None

    def limited_by_context(self, requested: int) -> bool:
        """True when the window, not `requested` (max_new_tokens), sets the answer's budget."""
        return self.max_new_tokens < requested


def fit_conversation(turns: list[dict], count_tokens: Callable[[list[dict]], int], context_length: int | None,
                     max_new_tokens: int) -> ContextFit:
    """Fit `turns` (an optional system turn, history, then the open user question) into `context_length`.

    `count_tokens(turns)` gives the prompt length (image placeholders included). See the module docstring.
    """
    length = count_tokens(turns)  # first: the template's own errors (unknown role, ...) name the problem best
    system, body = _split_system(turns)
    if not body or not _is_user(body[-1]):
        raise ValueError("the conversation must end with a user turn (the question to answer)")
    starts = [i for i, turn in enumerate(body) if _is_user(turn)]
    candidate, dropped = list(turns), 0
    if not context_length:
        return ContextFit(candidate, max_new_tokens, length)
    reserve = answer_reserve(context_length, max_new_tokens)
    while length + reserve > context_length and dropped < len(starts) - 1:
        dropped += 1
        candidate = system + _drop_exchanges(body, starts[dropped])
        length = count_tokens(candidate)
    if length >= context_length:
        raise ContextOverflowError(
            f"the question is too long: its prompt has {length} tokens (image and template included) and the "
            f"model's context holds {context_length}")
    questions = tuple(_strip_markers(body[i]["value"]) for i in starts[:dropped])
    return ContextFit(candidate, min(max_new_tokens, context_length - length), length, dropped, questions,
                      context_length)


def _split_system(turns: list[dict]) -> tuple[list[dict], list[dict]]:
    if turns and str(turns[0].get("from")).lower() == "system":
        return [turns[0]], list(turns[1:])
    return [], list(turns)


def _is_user(turn: dict) -> bool:
    return str(turn.get("from")).lower() in USER_ROLES


def _drop_exchanges(body: list[dict], keep_from: int) -> list[dict]:
    """`body[keep_from:]` with the image markers of the dropped turns moved to the first kept user turn."""
    moved = sum(turn["value"].count(IMAGE_TOKEN) for turn in body[:keep_from])
    kept = [dict(turn) for turn in body[keep_from:]]
    if moved:
        kept[0]["value"] = "\n".join([IMAGE_TOKEN] * moved + [kept[0]["value"]])
    return kept


def _strip_markers(text: str) -> str:
    return text.replace(IMAGE_TOKEN, "").strip()
