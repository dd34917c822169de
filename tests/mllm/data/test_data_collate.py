"""Collator: right padding to a multiple of 8, masks, labels, images in order, skipped samples aside."""
import torch

from mllm.constants import IGNORE_INDEX
from mllm.data import Collator, SkippedSample


def _item(n, index, n_images, fill):
    return {
        "input_ids": torch.arange(1, n + 1), "labels": torch.full((n,), 7), "index": index, "id": f"s{index}",
        "pixel_values": torch.full((n_images, 3, 4, 4), float(fill)),
    }


def test_right_pad_multiple_of_8_and_images_in_order():
    skipped = SkippedSample(1, "s1", "missing")
    batch = Collator(pad_token_id=0)([_item(5, 0, 1, 1), skipped, _item(11, 2, 0, 0), _item(3, 3, 2, 3)])
    assert batch["input_ids"].shape == (3, 16)
    assert batch["input_ids"][0].tolist() == [1, 2, 3, 4, 5] + [0] * 11
    assert batch["attention_mask"].sum(1).tolist() == [5, 11, 3]
    assert batch["attention_mask"][0, :5].all() and not batch["attention_mask"][0, 5:].any()
    assert (batch["labels"][0, 5:] == IGNORE_INDEX).all() and (batch["labels"][0, :5] == 7).all()
    assert batch["pixel_values"].shape == (3, 3, 4, 4)
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 3.0, 3.0]  # sample order, row-major
    assert batch["num_images"].tolist() == [1, 0, 2]
    assert batch["sample_ids"] == ["s0", "s2", "s3"] and batch["indices"] == [0, 2, 3]
    assert batch["skipped"] == [skipped]


def test_left_padding_and_all_skipped_batch():
    batch = Collator(pad_token_id=0, padding_side="left", pad_to_multiple_of=1)([_item(2, 0, 0, 0), _item(4, 1, 0, 0)])
    assert batch["input_ids"][0].tolist() == [0, 0, 1, 2]
    empty = Collator(pad_token_id=0, image_size=336)([SkippedSample(0, None, "corrupt")])
    assert empty["input_ids"].shape == (0, 0) and empty["pixel_values"].shape == (0, 3, 336, 336)
    assert len(empty["skipped"]) == 1
