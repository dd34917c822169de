"""The projector interface, building projectors by their registered type names, and the stage-1 artifact
(weights + small config). The types themselves live in their own modules (`projector.registry.PROJECTORS`).
"""
from __future__ import annotations

import abc
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .registry import projector_class

PROJECTOR_CONFIG_NAME = "projector_config.json"
PROJECTOR_WEIGHTS_NAME = "projector.safetensors"


class ProjectorMismatchError(ValueError):
    """A saved projector does not fit the model it is being loaded into (dims or tower differ)."""


@dataclass
class ProjectorConfig:
    projector_type: str = "mlp2x_gelu"
    in_features: int = 1024  # vision tower hidden size
    out_features: int = 4096  # LLM hidden size
    tower: str | None = None  # name of the vision tower the projector was trained with
    extra: dict = field(default_factory=dict)  # free-form provenance (e.g. select_layer, llm base)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ProjectorConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class Projector(nn.Module, abc.ABC):
    """Vision features [B, prefix + H·W, in_features] → LLM embeddings [B, output_tokens, out_features].

    A subclass is one projector family, registered by a type-name pattern in `projector.registry.PROJECTORS`;
    the integers of its name arrive as keyword `params`. It declares how many tokens it outputs for a tower's
    patch grid (`output_tokens`) and what it cannot project (`check`); `forward` receives the grid too.
    """

    def __init__(self, config: ProjectorConfig, **params: int):
        super().__init__()
        self.config = config
        self.params = params

    @classmethod
    def output_tokens(cls, grid: tuple[int, int], prefix_tokens: int, **params: int) -> int:
        """LLM tokens per image for features of `prefix_tokens` + a `grid` (rows, cols) of patches."""
        return prefix_tokens + grid[0] * grid[1]

    @classmethod
    def check(cls, grid: tuple[int, int], prefix_tokens: int, **params: int) -> None:
        """Raise `ValueError` if features of this geometry cannot be projected (called before any weights load)."""

    def num_output_tokens(self, grid: tuple[int, int], prefix_tokens: int = 0) -> int:
        return type(self).output_tokens(tuple(grid), prefix_tokens, **self.params)

    @property
    def output_width(self) -> int:
        return self.config.out_features

    @abc.abstractmethod
    def forward(self, features: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """`grid` (rows, cols of patches) for projectors that regroup patches; others ignore it."""


def projector_from_config(config: ProjectorConfig) -> Projector:
    """A freshly initialised projector of the registered class for `config.projector_type`."""
    cls, params = projector_class(config.projector_type)
    return cls(config, **params)


def build_projector(
    projector_type: str = "mlp2x_gelu", in_features: int = 1024, out_features: int = 4096, *, tower: str | None = None, **extra
) -> Projector:
    """Build a freshly initialised projector from its registered name (`linear`, `identity`, `mlp{N}x_gelu`, ...)."""
    return projector_from_config(ProjectorConfig(projector_type, in_features, out_features, tower, dict(extra)))


def save_projector(projector: Projector, directory: str | Path) -> Path:
    """Write `projector.safetensors` + `projector_config.json` into `directory` (the stage-1 artifact)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in projector.state_dict().items()}
    save_file(state, str(directory / PROJECTOR_WEIGHTS_NAME), metadata={"format": "pt"})
    (directory / PROJECTOR_CONFIG_NAME).write_text(json.dumps(projector.config.to_dict(), indent=2) + "\n")
    return directory


def load_projector(
    directory: str | Path,
    *,
    expected_in_features: int | None = None,
    expected_out_features: int | None = None,
    expected_tower: str | None = None,
    dtype: torch.dtype | None = None,
) -> Projector:
    """Load a projector saved by `save_projector`, checking it fits the tower and LLM it will join."""
    directory = Path(directory)
    config_path, weights_path = directory / PROJECTOR_CONFIG_NAME, directory / PROJECTOR_WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"projector file missing: {path}")
    config = ProjectorConfig.from_dict(json.loads(config_path.read_text()))
    problems = []
    if expected_in_features is not None and config.in_features != expected_in_features:
        problems.append(
            f"input dim {config.in_features} (saved) != vision tower hidden size {expected_in_features}"
        )
    if expected_out_features is not None and config.out_features != expected_out_features:
        problems.append(f"output dim {config.out_features} (saved) != LLM hidden size {expected_out_features}")
    if expected_tower is not None and config.tower is not None and config.tower != expected_tower:
        problems.append(f"trained with tower {config.tower!r}, but the model uses tower {expected_tower!r}")
    if problems:
        raise ProjectorMismatchError(f"projector at {directory} does not fit: " + "; ".join(problems))
    try:
        projector = projector_from_config(config)
    except ValueError as exc:
        raise ProjectorMismatchError(f"projector at {directory}: {exc}") from exc
    state = load_file(str(weights_path))
    try:
        result = projector.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shapes disagree with the config
        raise ProjectorMismatchError(f"projector weights at {weights_path} do not match {config}: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ProjectorMismatchError(
            f"projector weights at {weights_path} do not match type {config.projector_type!r}: "
            f"missing {result.missing_keys}, unexpected {result.unexpected_keys}"
        )
    if dtype is not None:
        projector.to(dtype)
    return projector
