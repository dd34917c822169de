"""Text with `<image>` markers + images → model inputs, with each marker expanded to `num_image_tokens`.

Lengths are known at tokenization time, so padding (left for generation, right for training) is the
tokenizer's ordinary padding and the model needs no re-packing.
"""
from __future__ import annotations

from collections.abc import Sequence

from .constants import IMAGE_TOKEN
from .errors import ImageCountError
from .templates import encode
from .tokenization import add_image_token, ensure_bos, expand_image_tokens, pad_sequences, tokenize_with_offsets


class MLLMProcessor:
    """Tokenizer + image processor of one model. `__call__` batches raw text; templates build the text."""

    def __init__(self, tokenizer, image_processor, num_image_tokens: int, image_token: str = IMAGE_TOKEN,
                 template: str = "vicuna_v1", model_max_length: int | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.num_image_tokens = int(num_image_tokens)
        self.image_token = image_token
        self.image_token_id = add_image_token(tokenizer, image_token)
        self.template = template  # the conversation template the model was trained with
        self.model_max_length = model_max_length

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text, each `<image>` expanded to `num_image_tokens` placeholders.

        Text between markers is tokenized piece by piece exactly as the training data is (`mllm.templates`).
        """
        ids = tokenize_with_offsets(self.tokenizer, text, self.image_token_id)[0]
        if add_special_tokens:
            ids = ensure_bos(self.tokenizer, ids)
        return expand_image_tokens(ids, self.image_token_id, self.num_image_tokens)[0]

    def pad(self, sequences: Sequence[Sequence[int]], padding_side: str = "left", pad_to_multiple_of: int | None = None):
        """Pad id lists into `input_ids` and `attention_mask` tensors."""
        return pad_sequences(sequences, self.tokenizer.pad_token_id, padding_side, pad_to_multiple_of)

    def _batch(self, sequences: list[list[int]], flat_images: list, padding_side: str) -> dict:
        input_ids, attention_mask = self.pad(sequences, padding_side)
        pixel_values = self.image_processor(flat_images) if flat_images else None
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}

    def __call__(
        self,
        text: str | Sequence[str],
        images=None,
        *,
        padding_side: str = "left",
        add_special_tokens: bool = True,
    ) -> dict:
        """Batch `text` (one string or a list) with `images`.

        `images`: None, one image per text marker in order; for a batch, a list with one entry per sample (an
        image, a list of images, or None for text-only samples). Returns `input_ids`, `attention_mask` and
        `pixel_values` (all images of the batch in order, or None).
        """
        texts = [text] if isinstance(text, str) else list(text)
        per_sample = self._images_per_sample(texts, images, single=isinstance(text, str))
        sequences, flat_images = [], []
        for i, (sample_text, sample_images) in enumerate(zip(texts, per_sample)):
            markers = sample_text.count(self.image_token)
            if markers != len(sample_images):
                raise ImageCountError(
                    f"sample {i}: {markers} '{self.image_token}' marker(s) in the text but {len(sample_images)} image(s)"
                )
            sequences.append(self.tokenize(sample_text, add_special_tokens=add_special_tokens))
            flat_images.extend(sample_images)
        return self._batch(sequences, flat_images, padding_side)

    def encode_prompt(self, conversations, template: str | None = None) -> list[int]:
        """Generation prompt ids (history + open assistant turn) through the training template code."""
        return self._encode_prompt(conversations, template).input_ids

    def _encode_prompt(self, conversations, template: str | None = None):
        return encode(conversations, template or self.template, self.tokenizer, image_token_id=self.image_token_id,
                      num_image_tokens=self.num_image_tokens, max_length=self.model_max_length,
                      add_generation_prompt=True)

    def chat_batch(self, conversations_batch, images_batch=None, template: str | None = None) -> dict:
        """Left-padded generation inputs for several conversations (LLaVA JSON form), with their images.

        `images_batch[i]` lists the images of conversation i in the order of its `<image>` markers.
        """
        images_batch = images_batch if images_batch is not None else [None] * len(conversations_batch)
        per_sample = self._images_per_sample(["" for _ in conversations_batch], images_batch, single=False)
        sequences, flat = [], []
        for i, (conv, ims) in enumerate(zip(conversations_batch, per_sample)):
            encoded = self._encode_prompt(conv, template)
            if encoded.num_images != len(ims):
                raise ImageCountError(f"conversation {i}: {encoded.num_images} '{self.image_token}' marker(s) but "
                                      f"{len(ims)} image(s)")
            sequences.append(encoded.input_ids)
            flat.extend(ims)
        return self._batch(sequences, flat, "left")

    @staticmethod
    def _images_per_sample(texts: list[str], images, single: bool) -> list[list]:
        if images is None:
            return [[] for _ in texts]
        if single:
            return [list(images) if isinstance(images, (list, tuple)) else [images]]
        if not isinstance(images, (list, tuple)) or len(images) != len(texts):
            raise ImageCountError(
                f"for a batch of {len(texts)} texts, pass `images` as a list of {len(texts)} entries "
                "(an image, a list of images, or None per sample)"
            )
        return [[] if im is None else list(im) if isinstance(im, (list, tuple)) else [im] for im in images]

    def decode(self, token_ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, token_ids, skip_special_tokens: bool = True) -> list[str]:
        return self.tokenizer.batch_decode(token_ids, skip_special_tokens=skip_special_tokens)
