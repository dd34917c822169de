"""The LLaVA-format dataset: a record in, token ids + labels + image tensors (or a SkippedSample) out."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from vision_tower import load_image

from ..constants import IMAGE_TOKEN
from ..templates import TemplateError, encode, get_template
from .records import RecordError, RecordStore, image_paths, record_id
from .report import DataError, SkippedSample


class LLaVADataset(Dataset):
    """Lazy LLaVA JSON/JSONL dataset; one record becomes one training sample.

    ``__getitem__`` returns ``{input_ids, labels, pixel_values [n_images, 3, S, S] (n may be 0), index, id,
    num_images, length, full_length, truncated}``, or a :class:`SkippedSample` for bad data (``strict=True`` raises
    :class:`DataError` instead). Text is encoded before any image is decoded, so a broken record costs little.
    ``image_processor`` maps a list of PIL images to ``FloatTensor[n, 3, S, S]`` (``vision_tower.ImageProcessor``).
    """

    def __init__(
        self,
        data_path: str | os.PathLike | RecordStore,
        tokenizer,
        *,
        template: str = "vicuna_v1",
        image_folder: str | os.PathLike | None = None,
        image_processor=None,
        num_image_tokens: int = 576,
        image_token_id: int | None = None,
        max_length: int | None = None,
        strict: bool = False,
        image_loader=None,
        limit: int | None = None,
    ):
        # a RecordStore already read (the trainer's preflight reads the file once, before any model loads)
        self.records = data_path if isinstance(data_path, RecordStore) else RecordStore(data_path, limit=limit)
        self.tokenizer = tokenizer
        get_template(template).check(tokenizer)  # a tokenizer without a usable chat template fails here, once
        self.template = template
        self.image_folder = None if image_folder is None else str(image_folder)
        self._folder = None if image_folder is None else os.path.abspath(image_folder)  # what resolve() compares to
        self.image_processor = image_processor
        self.num_image_tokens = num_image_tokens
        if image_token_id is None:
            image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
            if image_token_id is None or image_token_id == tokenizer.unk_token_id:
                raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token: call mllm.tokenization.add_image_token first")
        self.image_token_id = image_token_id
        if max_length is None:
            model_max = getattr(tokenizer, "model_max_length", None)
            max_length = model_max if model_max is not None and model_max < 1_000_000 else None
        self.max_length = max_length
        self.strict = strict
        self.image_loader = image_loader or load_image

    def __len__(self) -> int:
        return len(self.records)

    @property
    def modality_lengths(self) -> list[int]:
        """LLaVA's estimate for the sampler: word counts, + for image samples, - for text-only."""
        return self.records.modality_lengths.tolist()

    def resolve(self, path: str) -> str:
        """The file a record's image path names: inside ``image_folder`` when one is given.

        A record cannot point outside the folder (an absolute path, or ``..`` climbing out): a data file from
        elsewhere must not make training read arbitrary files. Without ``image_folder`` paths are used as given.
        """
        if self.image_folder is None:
            return path
        joined = os.path.normpath(os.path.join(self.image_folder, path))
        if os.path.isabs(path) or os.path.commonpath([os.path.abspath(joined), self._folder]) != self._folder:
            raise RecordError("outside_image_folder", f"{path!r} is not inside --image_folder {self.image_folder}")
        return joined

    def _skip(self, index: int, rid, reason: str, detail: str, path: str | None = None) -> SkippedSample:
        item = SkippedSample(index, rid, reason, detail, path)
        if self.strict:
            raise DataError(item, self.records.location(index))
        return item

    def __getitem__(self, index: int):
        return self.get(index)

    def get(self, index: int, with_pixels: bool = True):
        """One sample; ``with_pixels=False`` decodes images (to find bad files) but skips preprocessing."""
        rid = None
        try:
            record = self.records.record(index)
            rid = record_id(record)
            if not isinstance(record, dict):
                raise RecordError("malformed_record", f"record is a {type(record).__name__}, not an object")
            if "conversations" not in record:
                raise RecordError("no_conversations", "record has no 'conversations' field")
            paths = image_paths(record)
        except RecordError as exc:
            return self._skip(index, rid, exc.reason, exc.detail)
        try:
            enc = encode(
                record["conversations"], self.template, self.tokenizer,
                image_token_id=self.image_token_id, num_image_tokens=self.num_image_tokens, max_length=self.max_length,
            )  # fmt: skip
        except TemplateError as exc:
            return self._skip(index, rid, exc.reason, exc.detail)
        if enc.num_images != len(paths):
            return self._skip(
                index, rid, "image_count_mismatch", f"{enc.num_images} {IMAGE_TOKEN} markers for {len(paths)} images"
            )
        images = []
        for path in paths:
            try:
                full = self.resolve(path)
            except RecordError as exc:
                return self._skip(index, rid, exc.reason, exc.detail, path)
            try:
                images.append(self.image_loader(full))
            except Exception as exc:  # ImageLoadError carries .reason; anything else is an unreadable file too
                detail = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
                return self._skip(index, rid, getattr(exc, "reason", "corrupt"), detail, full)
        pixel_values = None
        if with_pixels:
            if images and self.image_processor is None:
                raise ValueError("the dataset has image samples but no image_processor was given")
            try:
                pixel_values = self._pixels(images)
            except Exception as exc:  # name the image that fails on its own, if one does
                culprit = next((p for p, im in zip(paths, images) if not _processes(self._pixels, im)), paths[0])
                return self._skip(index, rid, "image_processing_failed", f"{type(exc).__name__}: {exc}", self.resolve(culprit))
        return {
            "input_ids": torch.from_numpy(np.asarray(enc.input_ids, dtype=np.int64)),
            "labels": torch.from_numpy(np.asarray(enc.labels, dtype=np.int64)),
            "pixel_values": pixel_values,
            "index": index,
            "id": rid,
            "num_images": len(paths),
            "length": len(enc.input_ids),
            "full_length": enc.length_before_truncation,
            "truncated": enc.truncated,
            "dropped_leading_assistant": enc.dropped_leading_assistant,
        }

    def _pixels(self, images) -> torch.Tensor:
        if images:
            out = self.image_processor(images)
            if out.dim() != 4 or out.shape[0] != len(images):
                raise ValueError(f"image_processor returned shape {tuple(out.shape)} for {len(images)} images")
            return out
        size = getattr(self.image_processor, "image_size", None) or 0
        return torch.zeros((0, 3, size, size))


def _processes(pixels, image) -> bool:
    try:
        pixels([image])
        return True
    except Exception:
        return False
