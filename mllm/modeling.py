"""The multimodal model: vision tower → projector → spliced into a Hugging Face causal LM.

Image features replace placeholder tokens (one per image patch) in the token embeddings, so sequence lengths
are fixed at tokenization and batching, padding and generation are exactly the LLM's own. The loss is
computed from hidden states at labelled positions only, so full-vocabulary logits are never materialised
for the hundreds of image and prompt positions that carry no label.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import MLLMConfig, ModelSpec
from .constants import IGNORE_INDEX
from .errors import ImageCountError
from .llm import base_causal_lm, input_device


@dataclass
class MLLMOutput:
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # [B, L, V], only when asked for (return_logits=True)
    num_label_tokens: int = 0  # labelled positions that entered the loss (for exact gradient accumulation)


def image_tokens_per_image(vision_tower: nn.Module, projector: nn.Module) -> int:
    """LLM tokens per image: what the projector outputs for the tower's patch grid and kept prefix tokens."""
    return projector.num_output_tokens(vision_tower.grid_size, vision_tower.feature_prefix_tokens)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions count real tokens only, so left- or right-padded rows match their unpadded selves."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


class MLLM(nn.Module):
    """LLaVA-style model. Build with `mllm.build_model` or `mllm.load_model`; save with `save_pretrained`."""

    def __init__(self, config: MLLMConfig, llm: nn.Module, vision_tower: nn.Module, projector: nn.Module):
        super().__init__()
        if config.image_token_id is None:
            raise ValueError("config.image_token_id is not set: add the image token to the tokenizer first")
        self.config = config
        self.llm = llm
        self.vision_tower = vision_tower
        self.projector = projector
        self.image_token_id = config.image_token_id

    # ------------------------------------------------------------------ parts
    @property
    def spec(self) -> ModelSpec:
        """What this model is (`ModelSpec`: the manifest without provenance); `build_model(model.spec)` rebuilds it."""
        return self.config.spec

    @property
    def device(self) -> torch.device:
        return input_device(self.llm)

    @property
    def num_image_tokens(self) -> int:
        """LLM tokens per image: the projector's output for the tower's patch grid (`projector.registry`)."""
        return image_tokens_per_image(self.vision_tower, self.projector)

    def get_input_embeddings(self) -> nn.Module:
        return base_causal_lm(self.llm).get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        return base_causal_lm(self.llm).get_output_embeddings()

    @property
    def _no_split_modules(self) -> list[str]:
        """Blocks that are never split across devices and that FSDP wraps one unit each (accelerate reads this):
        the LLM's decoder layer and the vision tower's block."""
        names = list(getattr(base_causal_lm(self.llm), "_no_split_modules", None) or [])
        blocks = getattr(self.vision_tower, "blocks", None)
        if blocks is not None and len(blocks):
            names.append(type(blocks[0]).__name__)
        return list(dict.fromkeys(names))

    def place_vision_modules(self) -> None:
        """Put tower and projector on the device of the LLM's input embeddings (also under a device_map).

        An LLM on the meta device (FSDP's rank-0-only loading: rank 0 broadcasts the weights later) leaves them
        where they are, so their non-persistent buffers keep real values.
        """
        device = self.device
        if device.type == "meta":
            return
        self.vision_tower.to(device)
        self.projector.to(device)

    # ------------------------------------------------------------------ images
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] → projected features [N, num_image_tokens, d_llm]."""
        pixel_values = pixel_values.to(self.device)  # the tower casts to its own dtype
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.vision_tower.trainable):
            features = self.vision_tower(pixel_values)
        proj_dtype = next(self.projector.parameters(), features).dtype
        return self.projector(features.to(proj_dtype), grid=self.vision_tower.grid_size)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with projected image features written into the placeholder positions."""
        input_ids = input_ids.to(self.device)
        image_mask = input_ids == self.image_token_id
        # The placeholder id may lie outside the embedding matrix: look up a harmless id, then overwrite.
        embeds = self.get_input_embeddings()(input_ids.masked_fill(image_mask, 0))
        n_placeholders = int(image_mask.sum())
        n_images = 0 if pixel_values is None else int(pixel_values.shape[0])
        expected = n_images * self.num_image_tokens
        if n_placeholders != expected:
            raise ImageCountError(
                f"{n_placeholders} image placeholder tokens for {n_images} image(s); each image needs exactly "
                f"{self.num_image_tokens} (= {expected} in all). Use the processor to expand '<image>' markers."
            )
        if n_images:
            features = self.encode_images(pixel_values)
            embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), features.reshape(-1, features.shape[-1]).to(embeds.dtype))
        elif self.training:
            # Text-only batch: one blank image goes through tower and projector with zero weight, so DDP/ZeRO see
            # the projector's gradients and every rank of FSDP/ZeRO-3 gathers the same parameters in the same order.
            size = self.vision_tower.image_size
            blank = embeds.new_zeros(1, 3, size, size)
            embeds = embeds + 0.0 * self.encode_images(blank).sum().to(embeds.dtype)
        return embeds

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_logits: bool = False,
        **unused,
    ) -> MLLMOutput:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(self.device)
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        embeds = self.embed(input_ids, pixel_values)
        causal_lm = base_causal_lm(self.llm)
        decoder_out = causal_lm.get_decoder()(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids.to(self.device), use_cache=False
        )
        hidden = decoder_out.last_hidden_state
        out = MLLMOutput()
        if return_logits:
            out.logits = self._logits(causal_lm, hidden)
        if labels is not None:
            # image positions never carry a label, whatever the caller passed
            labels = labels.to(hidden.device).masked_fill(input_ids.to(hidden.device) == self.image_token_id, IGNORE_INDEX)
            shift_labels = labels[:, 1:]
            selected = shift_labels != IGNORE_INDEX
            out.num_label_tokens = int(selected.sum())
            logits = self._logits(causal_lm, hidden[:, :-1][selected])
            targets = shift_labels[selected]
            if out.num_label_tokens and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[-1]):
                raise ValueError(
                    f"labels hold ids outside the LLM vocabulary [0, {logits.shape[-1]}): "
                    f"min {int(targets.min())}, max {int(targets.max())} (use {IGNORE_INDEX} for unsupervised positions)"
                )
            if out.num_label_tokens:
                out.loss = F.cross_entropy(logits.float(), targets, reduction="mean")
            else:  # nothing supervised: a zero that still carries the graph
                out.loss = logits.float().sum() * 0.0
        return out

    @staticmethod
    def _logits(causal_lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        logits = causal_lm.get_output_embeddings()(hidden)
        softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    # ------------------------------------------------------------------ generate
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Generate continuations (new tokens only) for a left-padded batch; kwargs go to HF `generate`.

        Greedy by default; `do_sample=True, temperature=..., top_p=...` samples; `streamer=` streams; the KV
        cache is the LLM's own. Rows must be left-padded so that every row's last prompt token is aligned.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(self.device)
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("generate needs left-padded inputs (a row ends with padding): use padding_side='left'")
        embeds = self.embed(input_ids, pixel_values)
        generate_kwargs.setdefault("do_sample", False)
        generate_kwargs.setdefault("use_cache", True)
        if not generate_kwargs["do_sample"]:
            for key in ("temperature", "top_p", "top_k"):
                generate_kwargs.pop(key, None)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)

    # ------------------------------------------------------------------ training helpers
    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters grouped for optimizers that give the projector its own learning rate."""
        parts = {"projector": self.projector, "llm": self.llm, "vision_tower": self.vision_tower}
        return {name: [p for p in part.parameters() if p.requires_grad] for name, part in parts.items()}
