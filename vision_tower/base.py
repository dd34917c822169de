"""The interface every tower shares: LLaVA-style layer/feature selection, freezing, checkpointing, saving.

A subclass is one architecture (registered in `vision_tower.registry.TOWERS`): it declares its `arch`, its
prefix-token count (1 for a CLS token, 0 for none), its presets and the checkpoint layouts it reads, infers
its sizes from canonical weights, and supplies the embedding step, the list of blocks and the mapping to its
canonical checkpoint names. The block loop lives here so every architecture selects layers, stops early and
checkpoints the same way.
"""
from __future__ import annotations

import abc
import json
import logging
import os
from typing import Any, ClassVar, Mapping

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .checkpoint import VisionCheckpointError
from .config import CONFIG_MODEL_TYPE, VisionTowerConfig
from .processor import ImageProcessor

logger = logging.getLogger(__name__)

SELECT_FEATURES = ("patch", "cls_patch")
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class VisionTower(nn.Module, abc.ABC):
    """Image encoder returning the hidden state of `select_layer` (LLaVA meaning: `hidden_states[select_layer]`
    where `hidden_states[0]` is the embedding output and `hidden_states[i]` the output of block i).

    Every hidden state is `num_prefix_tokens` tokens (CLS, if any) followed by the patch grid in row-major
    order. `select_feature="patch"` drops the prefix tokens, `"cls_patch"` keeps them (towers with a CLS token
    only). Only the blocks needed for the selected layer run unless `output_hidden_states=True`. Built frozen
    (no grads, eval mode).
    """

    arch: ClassVar[str]  # the registry name; configs with another arch are refused
    num_prefix_tokens: ClassVar[int]  # tokens before the patch grid in every hidden state (1 = CLS, 0 = none)
    presets: ClassVar[tuple[VisionTowerConfig, ...]] = ()  # named configs (collected by registry.PRESETS)
    layouts: ClassVar[tuple] = ()  # the `checkpoint.CheckpointLayout`s this tower's weights come in

    def __init__(self, config: VisionTowerConfig, *, select_layer: int = -2, select_feature: str = "patch"):
        super().__init__()
        if config.arch != self.arch:
            raise ValueError(f"{type(self).__name__} needs arch {self.arch!r}, got {config.arch!r}")
        self.config = config
        self.select_layer = select_layer
        self.select_feature = select_feature
        self._frozen = False
        self._gradient_checkpointing = False

    # ------------------------------------------------------------------ subclass hooks
    @classmethod
    @abc.abstractmethod
    def infer_structure(cls, canonical) -> dict[str, Any]:
        """The `VisionTowerConfig` fields readable from canonical weights (`checkpoint.Canonical`), `arch`
        and `image_size` included; used to match a checkpoint without a config against the presets."""

    def check_checkpoint(self, canonical) -> None:
        """Verify what a checkpoint carried besides the weights (e.g. RoPE tables) after a load."""

    @abc.abstractmethod
    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`hidden_states[0]`: [B, num_prefix_tokens + num_patches, hidden_size]."""

    @property
    @abc.abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, in order (`select_layer` counts them)."""

    def block_inputs(self, x: torch.Tensor) -> tuple:
        """Extra positional arguments every block call receives after the hidden states (e.g. RoPE tables)."""
        return ()

    @abc.abstractmethod
    def embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters used before the first block (patch/pos/cls embeddings, pre-norm)."""

    @abc.abstractmethod
    def canonical_key_map(self) -> dict[str, str]:
        """{canonical checkpoint key: this module's state_dict key} for every persistent tensor."""

    @abc.abstractmethod
    def init_non_persistent_buffers(self) -> None:
        """Recompute buffers that checkpoints do not carry (after building on the meta device)."""

    # ------------------------------------------------------------------ geometry
    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.config.grid_size, self.config.grid_size)

    @property
    def num_patches(self) -> int:
        return self.config.grid_size ** 2

    @property
    def feature_prefix_tokens(self) -> int:
        """Prefix (CLS) tokens in front of the patch grid in `forward`'s output."""
        return self.num_prefix_tokens if self.select_feature == "cls_patch" else 0

    @property
    def num_image_tokens(self) -> int:
        """Tokens per image in `forward`'s output. The LLM's count is the projector's (`projector.registry`)."""
        return self.num_patches + self.feature_prefix_tokens

    @property
    def depth(self) -> int:
        return self.config.num_layers

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def image_processor(self):
        """The tower's own preprocessing (CLIP convention: resize short side, center crop, normalise)."""
        return ImageProcessor(self.image_size, self.config.image_mean, self.config.image_std, image_aspect_ratio="crop")

    # ------------------------------------------------------------------ selection
    @property
    def select_layer(self) -> int:
        return self._select_layer

    @select_layer.setter
    def select_layer(self, value: int) -> None:
        n = self.config.num_layers + 1
        if isinstance(value, bool) or not isinstance(value, int) or not -n <= value < n:
            raise ValueError(f"select_layer must be an int in [{-n}, {n - 1}] for a {n - 1}-block tower, got {value!r}")
        self._select_layer = value

    @property
    def layer_index(self) -> int:
        """Non-negative index into `hidden_states` (= number of blocks that must run)."""
        return self._select_layer % (self.config.num_layers + 1)

    @property
    def select_feature(self) -> str:
        return self._select_feature

    @select_feature.setter
    def select_feature(self, value: str) -> None:
        if value not in SELECT_FEATURES:
            raise ValueError(f"select_feature must be one of {SELECT_FEATURES}, got {value!r}")
        if value == "cls_patch" and not self.num_prefix_tokens:
            raise ValueError(f"select_feature 'cls_patch' needs a CLS token; {self.arch} towers have none (use 'patch')")
        self._select_feature = value

    # ------------------------------------------------------------------ forward
    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False):
        """[B, 3, S, S] → features [B, num_image_tokens, hidden_size]; with `output_hidden_states=True` also the
        tuple of all depth+1 hidden states (embedding output first)."""
        self._check_pixels(pixel_values)
        x = self.embed(pixel_values.to(dtype=self.dtype))
        n_run = self.config.num_layers if output_hidden_states else self.layer_index
        extra = self.block_inputs(x)
        use_ckpt = self._gradient_checkpointing and torch.is_grad_enabled()
        states = [x] if output_hidden_states else None
        for block in self.blocks[:n_run]:
            if use_ckpt:
                x = checkpoint(block, x, *extra, use_reentrant=False)
            else:
                x = block(x, *extra)
            if states is not None:
                states.append(x)
        selected = states[self.layer_index] if states is not None else x
        features = selected[:, self.num_prefix_tokens:] if self._select_feature == "patch" else selected
        if output_hidden_states:
            return features, tuple(states)
        return features

    def _check_pixels(self, pixel_values: Any) -> None:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        s = self.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or tuple(pixel_values.shape[2:]) != (s, s):
            raise ValueError(f"pixel_values must have shape [B, 3, {s}, {s}] for this tower, got {tuple(pixel_values.shape)}")
        if not pixel_values.is_floating_point():
            raise TypeError(f"pixel_values must be a float tensor (normalised), got {pixel_values.dtype}")

    # ------------------------------------------------------------------ training controls
    @property
    def trainable(self) -> bool:
        """Whether any parameter needs grad (after `unfreeze`, or set by hand)."""
        return any(p.requires_grad for p in self.parameters())

    def freeze(self) -> "VisionTower":
        """No parameter needs grad and the tower stays in eval mode, even under a parent's `.train()`."""
        self.requires_grad_(False)
        self._frozen = True
        super().train(False)
        return self

    def unfreeze(self, last_k_blocks: int | None = None) -> "VisionTower":
        """Make trainable everything that feeds `select_layer` (None) or only the last k of those blocks.

        Blocks after the selected layer (and the final norm) never run, so they stay frozen; this keeps
        DDP free of unused trainable parameters. Other parameters keep their current state.
        """
        used = self.layer_index
        if last_k_blocks is None:
            for p in self.embedding_parameters():
                p.requires_grad_(True)
            first = 0
        else:
            if isinstance(last_k_blocks, bool) or not isinstance(last_k_blocks, int) or not 0 <= last_k_blocks <= used:
                raise ValueError(f"last_k_blocks must be an int in [0, {used}] (blocks feeding select_layer "
                                 f"{self.select_layer}), got {last_k_blocks!r}")
            first = used - last_k_blocks
        for block in self.blocks[first:used]:
            block.requires_grad_(True)
        self._frozen = False
        return self

    def train(self, mode: bool = True) -> "VisionTower":
        return super().train(False if self._frozen else mode)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Mapping | None = None) -> None:
        """Recompute each block in backward (non-reentrant checkpointing); kwargs accepted for HF compatibility."""
        self._gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self._gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self._gradient_checkpointing

    # ------------------------------------------------------------------ state dict in canonical names
    def canonical_state_dict(self) -> dict[str, torch.Tensor]:
        own = self.state_dict()
        return {ck: own[mk] for ck, mk in self.canonical_key_map().items()}

    def load_canonical_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Strict load from canonical names; missing, unexpected or mis-shaped keys raise `VisionCheckpointError`."""
        key_map = self.canonical_key_map()
        own = self.state_dict()
        missing = sorted(set(key_map) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(key_map))
        shapes = sorted(
            f"{k}: checkpoint {tuple(v.shape)} vs tower {tuple(own[key_map[k]].shape)}"
            for k, v in state_dict.items() if k in key_map and tuple(v.shape) != tuple(own[key_map[k]].shape)
        )
        if missing or unexpected or shapes:
            raise VisionCheckpointError.from_lists(missing, unexpected, shapes, config=self.config)
        with torch.no_grad():
            self.load_state_dict({key_map[k]: v for k, v in state_dict.items()}, strict=True)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `config.json` and `model.safetensors` (the tower's canonical key names, e.g. EVA-CLIP for eva02)."""
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as fh:
            json.dump({"model_type": CONFIG_MODEL_TYPE, **self.config.to_dict()}, fh, indent=2)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.canonical_state_dict().items()}
        save_file(tensors, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt", "arch": self.config.arch})

    def extra_repr(self) -> str:
        c = self.config
        return (f"arch={c.arch}, name={c.name}, image_size={c.image_size}, patch_size={c.patch_size}, "
                f"select_layer={self.select_layer}, select_feature={self.select_feature}")
