"""Labels from character spans, their consistency check, and image-safe truncation.

The rendered prompt is tokenized once with offsets; a token is supervised when its character span overlaps
an assistant-response span (response plus end-of-turn text). The check then proves, per sample, that the
supervised tokens are exactly those responses: one contiguous run per response, spilling over the span only
by whitespace (a SentencePiece ``▁`` that belongs to the separator), and decoding back to the response text.
Anything else is a :class:`~mllm.errors.TemplateError`, so a mis-masked sample is counted, not trained on.
"""
from __future__ import annotations

import numpy as np

from ..constants import IGNORE_INDEX
from ..errors import TemplateError


def span_overlaps(offsets, spans) -> np.ndarray:
    """``[len(spans), len(offsets)]`` bool: token j's characters overlap span i. A zero-width token counts
    only when it lies strictly inside a span."""
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    start, end = off[:, 0], off[:, 1]
    out = np.zeros((len(spans), len(off)), dtype=bool)
    wide = end > start
    for i, (a, b) in enumerate(spans):
        out[i] = np.where(wide, (start < b) & (end > a), (a < start) & (start < b))
    return out


def label_from_spans(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """``ids`` where a token's characters overlap one of the spans, else IGNORE_INDEX."""
    hit = span_overlaps(offsets, spans).any(axis=0)
    return np.where(hit, np.asarray(ids, dtype=np.int64), IGNORE_INDEX).tolist()


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def check_supervision(tokenizer, text, ids, offsets, labels, spans) -> None:
    """Raise ``TemplateError('mask_mismatch' | 'no_supervised_tokens')`` unless labels are exactly the spans."""
    supervised = np.asarray(labels) != IGNORE_INDEX
    if not supervised.any():
        raise TemplateError("no_supervised_tokens", "no token overlaps an assistant response")
    overlaps = span_overlaps(offsets, spans) & supervised
    for n, (a, b) in enumerate(spans):
        run = np.flatnonzero(overlaps[n])
        if run.size == 0:
            raise TemplateError("mask_mismatch", f"response {n} got no supervised token")
        if run[-1] - run[0] + 1 != run.size:
            raise TemplateError("mask_mismatch", f"response {n} is not one contiguous token run")
        lo = min(offsets[j][0] for j in run)
        hi = max(offsets[j][1] for j in run)
        if text[lo:a].strip() or text[b:hi].strip():
            raise TemplateError(
                "mask_mismatch", f"response {n}: a supervised token also covers prompt text {text[lo:a]!r}/{text[b:hi]!r}"
            )
        expected = text[a:b].lstrip()
        got = _decode(tokenizer, [ids[j] for j in run]).lstrip()
        if got != expected:
            # Tokenizers with a normaliser or without byte fallback cannot round-trip some characters; accept
            # exactly what the tokenizer itself makes of the response text, nothing looser.
            alone = _decode(tokenizer, tokenizer(text[a:b], add_special_tokens=False)["input_ids"]).lstrip()
            if got != alone:
                raise TemplateError("mask_mismatch", f"response {n} decodes to {got[:60]!r}, expected {expected[:60]!r}")
    stray = int(supervised.sum() - overlaps.any(axis=0).sum())
    if stray:
        raise TemplateError("mask_mismatch", f"{stray} supervised tokens lie outside every response")


def truncate(ids: list[int], labels: list[int], image_token_id: int | None, max_length: int, generation: bool = False):
    """Cut to ``max_length`` without touching image placeholders; raise when that is impossible or useless."""
    if generation:
        raise TemplateError("prompt_too_long", f"prompt has {len(ids)} tokens, more than max_length {max_length}")
    if image_token_id is not None and image_token_id in ids:
        last_image = len(ids) - 1 - ids[::-1].index(image_token_id)
        if last_image >= max_length:
            raise TemplateError(
                "images_do_not_fit", f"image placeholders reach token {last_image + 1}, beyond max_length {max_length}"
            )
    ids, labels = ids[:max_length], labels[:max_length]
    if all(lab == IGNORE_INDEX for lab in labels):
        raise TemplateError("no_supervised_tokens", f"every supervised token lies beyond max_length {max_length}")
    return ids, labels
