"""Tokenizer helpers shared by the processor and the data pipeline.

The image placeholder is one added special token (``<image>``). Text is tokenized with one placeholder per
image marker, then each placeholder is expanded to ``num_image_tokens`` copies, so a sample's final length
is known before the model runs and labels line up with the embeddings the model builds. The placeholder id
may lie outside the LLM's embedding matrix: the model never looks it up (it overwrites those positions
with projected image features), so the LLM's vocabulary is never resized.
"""
from __future__ import annotations

from collections.abc import Sequence

from .constants import IGNORE_INDEX, IMAGE_TOKEN


def add_image_token(tokenizer, image_token: str = IMAGE_TOKEN) -> int:
    """Register ``image_token`` as a special token (idempotent) and return its id.

    Also gives the tokenizer a pad token when it has none (unk, else eos), which batching needs.
    """
    vocab = tokenizer.get_vocab()
    if image_token not in vocab:
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer.convert_tokens_to_ids(image_token)


def expand_image_tokens(
    input_ids: Sequence[int],
    image_token_id: int,
    num_image_tokens: int,
    labels: Sequence[int] | None = None,
) -> tuple[list[int], list[int] | None]:
    """Replace every ``image_token_id`` by ``num_image_tokens`` copies; labels there become IGNORE_INDEX."""
    ids_out: list[int] = []
    labels_out: list[int] | None = [] if labels is not None else None
    for i, tok in enumerate(input_ids):
        if tok == image_token_id:
            ids_out.extend([image_token_id] * num_image_tokens)
            if labels_out is not None:
                labels_out.extend([IGNORE_INDEX] * num_image_tokens)
        else:
            ids_out.append(tok)
            if labels_out is not None:
                labels_out.append(labels[i])
    return ids_out, labels_out


def ensure_bos(tokenizer, input_ids: Sequence[int]) -> list[int]:
    """Start with BOS when the tokenizer has one, whether or not its config adds it.

    A Llama SentencePiece tokenizer loaded without a tokenizer_config (add_bos_token=False) would otherwise
    silently drop the BOS that Vicuna/LLaVA were trained with; tokenizers without a BOS (Qwen) are unchanged.
    """
    ids = list(input_ids)
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


def tokenize_with_offsets(tokenizer, text: str, image_token_id: int | None = None):
    """Token ids and character offsets of ``text``; each ``<image>`` marker becomes one ``image_token_id``.

    The text between markers is tokenized as its own piece (one batched call), as LLaVA's
    ``tokenizer_image_token`` does, so a SentencePiece tokenizer starts a new word after an image and the ids
    match LLaVA-1.5's; byte-level BPE tokenizers split at special tokens anyway and are unaffected.
    """
    if image_token_id is None:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    segments = text.split(IMAGE_TOKEN)
    enc = tokenizer(segments, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets, pos = [], [], 0
    for n, segment in enumerate(segments):
        if n:
            ids.append(image_token_id)
            offsets.append((pos, pos + len(IMAGE_TOKEN)))
            pos += len(IMAGE_TOKEN)
        ids += enc["input_ids"][n]
        offsets += [(pos + a, pos + b) for a, b in enc["offset_mapping"][n]]
        pos += len(segment)
    return ids, offsets


def pad_sequences(sequences: Sequence[Sequence[int]], pad_value: int, padding_side: str = "left",
                  pad_to_multiple_of: int | None = None):
    """Id lists -> (padded [B, L] long tensor, attention mask); L is the longest, rounded up to the multiple."""
    import torch

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max((len(s) for s in sequences), default=0)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    padded = torch.full((len(sequences), length), pad_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            span = slice(length - len(seq), length) if padding_side == "left" else slice(0, len(seq))
            padded[row, span] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, span] = 1
    return padded, mask
