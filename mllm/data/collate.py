"""Batching: right padding to a multiple of 8, attention mask, concatenated images, skipped samples aside."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..constants import IGNORE_INDEX
from ..tokenization import pad_sequences
from .report import SkippedSample


@dataclass
class Collator:
    """Collate dataset items into a training batch.

    ``pixel_values`` is the concatenation of the kept samples' images in sample order; the model scatters
    image features into the placeholder positions in row-major order, so the i-th image of the batch fills
    the i-th run of placeholders. :class:`SkippedSample` items are moved to ``batch["skipped"]``.
    """

    pad_token_id: int
    pad_to_multiple_of: int = 8
    padding_side: str = "right"
    image_size: int | None = None  # shape of an empty ``pixel_values`` when no item says it

    def __post_init__(self):
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")
        if self.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token (mllm.tokenization.add_image_token sets one)")

    def __call__(self, items: list) -> dict:
        kept = [x for x in items if not isinstance(x, SkippedSample)]
        skipped = [x for x in items if isinstance(x, SkippedSample)]
        input_ids, attention_mask = pad_sequences([x["input_ids"] for x in kept], self.pad_token_id,
                                                  self.padding_side, self.pad_to_multiple_of)
        labels, _ = pad_sequences([x["labels"] for x in kept], IGNORE_INDEX, self.padding_side,
                                  self.pad_to_multiple_of)
        pixels = [x["pixel_values"] for x in kept if x.get("pixel_values") is not None]
        if pixels:
            pixel_values = torch.cat(pixels, dim=0)
        else:
            s = self.image_size or 0
            pixel_values = torch.zeros((0, 3, s, s))
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": pixel_values,
            "num_images": torch.tensor([len(x["pixel_values"]) if x.get("pixel_values") is not None else 0 for x in kept]),
            "sample_ids": [x.get("id") for x in kept],
            "indices": [x.get("index") for x in kept],
            "skipped": skipped,
        }
