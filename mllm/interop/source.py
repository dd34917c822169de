"""Reading a Hugging Face-style model directory: its config.json, its (possibly sharded) weights, its files.

Both foreign formats (LLaVA's own and llava-hf) are such directories; this module knows nothing about LLaVA.
Weights are read with safetensors or `torch.load(weights_only=True)`, never by unpickling arbitrary objects.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

from vision_tower.checkpoint import read_weights

from ..errors import UserError

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# what an import needs from a hub repository: configs, weights, tokenizer and processor files
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.model", "*.jinja", "*.txt", "*.tiktoken"]
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE = ("model.safetensors", "pytorch_model.bin")


class InteropError(UserError, ValueError):
    """A model directory that cannot be imported or exported as asked; the message names the problem."""


class SourceDir:
    """A local model directory (a hub id is downloaded first): config, weight files, other files."""

    def __init__(self, path: str | os.PathLike, origin: str | None = None):
        self.path = Path(path)
        self.origin = origin or str(path)  # what the user typed (hub id or path), for messages and provenance
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise InteropError(f"{self.origin} has no config.json: not a Hugging Face model directory")
        try:
            self.config = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise InteropError(f"{config_path} is not valid JSON: {exc}") from exc
        if not isinstance(self.config, dict):
            raise InteropError(f"{config_path} does not hold a JSON object")

    @classmethod
    def open(cls, source: str | os.PathLike) -> SourceDir:
        """A local directory, or a hub repository id fetched into the Hugging Face cache."""
        text = os.fspath(source)
        if os.path.isdir(text):
            return cls(text)
        if os.path.exists(text):
            raise InteropError(f"{text} is a file; pass the model directory that holds config.json")
        if not _HUB_ID.match(text):
            raise InteropError(f"{text} is neither an existing directory nor a hub repository id (owner/name)")
        try:
            import huggingface_hub as hub

            local = hub.snapshot_download(text, allow_patterns=_HUB_PATTERNS)
        except Exception as exc:
            raise InteropError(f"{text} is not a local directory and could not be fetched from the Hugging Face "
                               f"Hub ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                               f"download it elsewhere and pass the directory") from exc
        return cls(local, origin=text)

    def file(self, name: str) -> Path | None:
        path = self.path / name
        return path if path.is_file() else None

    def weight_files(self) -> list[Path]:
        """The model's weight files: the shards an index lists, else the single standard file."""
        for index_name in _INDEXES:
            index = self.file(index_name)
            if index is None:
                continue
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InteropError(f"{index} is not a weight index (no weight_map): {exc}") from exc
            files = [self.path / name for name in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise InteropError(f"{self.origin}: {index_name} lists shard(s) that are missing: {missing[:5]}")
            return files
        for name in _SINGLE:
            if self.file(name):
                return [self.path / name]
        raise InteropError(f"{self.origin} has no weights: expected {' or '.join(_SINGLE)} or a sharded index "
                           f"({' / '.join(_INDEXES)})")

    def read_weights(self) -> dict[str, torch.Tensor]:
        """Every tensor of the model, under its saved names (shards merged; a name in two shards is an error)."""
        tensors: dict[str, torch.Tensor] = {}
        files = self.weight_files()
        for path in files:
            part = read_weight_file(path)
            clash = sorted(set(part) & set(tensors))
            if clash:
                raise InteropError(f"{path.name} repeats tensors already read from another shard: {clash[:5]}")
            tensors.update(part)
        logger.info("read %d tensors from %d file(s) in %s", len(tensors), len(files), self.origin)
        return tensors


def read_weight_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """One .safetensors or pickle (.bin/.pt) file as {name: tensor}; pickles only via weights_only=True."""
    return read_weights(path)


def split_by_prefix(tensors: dict, prefixes: dict[str, str]) -> tuple[dict[str, dict], dict]:
    """Sort tensors into parts by the first matching prefix ({prefix: part}); the prefix is stripped.

    Returns ({part: {name without prefix: tensor}}, {unmatched name: tensor}).
    """
    parts: dict[str, dict] = {part: {} for part in prefixes.values()}
    rest = {}
    ordered = sorted(prefixes.items(), key=lambda item: -len(item[0]))  # longest prefix wins
    for name, tensor in tensors.items():
        for prefix, part in ordered:
            if name.startswith(prefix):
                parts[part][name[len(prefix):]] = tensor
                break
        else:
            rest[name] = tensor
    return parts, rest


def describe_keys(keys, limit: int = 6) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys) - limit} more)" if len(keys) > limit else shown
