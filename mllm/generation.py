"""Text generation for conversations: one code path for chat, the demo and evaluation.

Prompts come from the training template (`MLLMProcessor.chat_batch`), generation stops at EOS or the
template's end-of-turn token, and batches are left-padded so batched output equals one-by-one output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .llm import stop_token_ids


@dataclass
class GenerationSettings:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy (LLaVA: do_sample = temperature > 0)
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None

    def kwargs(self) -> dict:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        out: dict = {"max_new_tokens": int(self.max_new_tokens), "do_sample": self.temperature > 0}
        if out["do_sample"]:
            out["temperature"] = float(self.temperature)
            if self.top_p is not None:
                if not 0 < self.top_p <= 1:
                    raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
                out["top_p"] = float(self.top_p)
            if self.top_k is not None:
                out["top_k"] = int(self.top_k)
        if self.repetition_penalty is not None:
            out["repetition_penalty"] = float(self.repetition_penalty)
        return out


def generate_ids(model, processor, conversations_batch, images_batch=None, settings: GenerationSettings | None = None,
                 streamer=None, template: str | None = None) -> torch.Tensor:
    """New token ids [B, T] for a batch of conversations (LLaVA JSON form) and their images."""
    settings = settings or GenerationSettings()
    batch = processor.chat_batch(conversations_batch, images_batch, template=template)
    tokenizer = processor.tokenizer
    return model.generate(
        **batch, **settings.kwargs(), streamer=streamer,
        eos_token_id=stop_token_ids(tokenizer, model.llm), pad_token_id=tokenizer.pad_token_id,
    )


def generate_text(model, processor, conversations_batch, images_batch=None, settings: GenerationSettings | None = None,
                  template: str | None = None) -> list[str]:
    """Decoded answers (special tokens dropped, surrounding whitespace stripped) for a batch."""
    ids = generate_ids(model, processor, conversations_batch, images_batch, settings, template=template)
    return [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]
