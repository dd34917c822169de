"""Projector types, built from their LLaVA names, and the stage-1 artifact (weights + small config).

`mlp{N}x_gelu` follows LLaVA's `multimodal_projector/builder.py`: Linear(d_vision→d_llm), then
(GELU, Linear(d_llm→d_llm)) × (N−1). Parameter names (`layers.0.weight`, `layers.2.weight`, …) keep LLaVA's
`mm_projector.{0,2}` indices, so LLaVA's `mm_projector.bin` maps by stripping a prefix.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PROJECTOR_CONFIG_NAME = "projector_config.json"
PROJECTOR_WEIGHTS_NAME = "projector.safetensors"
_MLP_RE = re.compile(r"^mlp(\d+)x_gelu$")


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


def _validate_type(projector_type: str) -> None:
    if projector_type in ("linear", "identity") or _MLP_RE.match(projector_type):
        if (m := _MLP_RE.match(projector_type)) and int(m.group(1)) < 1:
            raise ValueError(f"projector type {projector_type!r}: depth must be >= 1")
        return
    raise ValueError(
        f"unknown projector type {projector_type!r}; expected 'linear', 'identity' or 'mlp<N>x_gelu' (e.g. 'mlp2x_gelu')"
    )


class Projector(nn.Module):
    """Vision features [..., in_features] → LLM embeddings [..., out_features]."""

    def __init__(self, config: ProjectorConfig):
        super().__init__()
        _validate_type(config.projector_type)
        self.config = config
        kind, d_in, d_out = config.projector_type, config.in_features, config.out_features
        if kind == "identity":
            if d_in != d_out:
                raise ValueError(f"identity projector needs in_features == out_features, got {d_in} and {d_out}")
            modules: list[nn.Module] = [nn.Identity()]
        elif kind == "linear":
            modules = [nn.Linear(d_in, d_out)]
        else:
            depth = int(_MLP_RE.match(kind).group(1))
            modules = [nn.Linear(d_in, d_out)]
            for _ in range(depth - 1):
                modules += [nn.GELU(), nn.Linear(d_out, d_out)]
        self.layers = nn.Sequential(*modules)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def build_projector(
    projector_type: str = "mlp2x_gelu", in_features: int = 1024, out_features: int = 4096, *, tower: str | None = None, **extra
) -> Projector:
    """Build a freshly initialised projector from its name (`linear`, `identity`, `mlp{N}x_gelu`)."""
    return Projector(ProjectorConfig(projector_type, in_features, out_features, tower, dict(extra)))


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
    projector = Projector(config)
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
