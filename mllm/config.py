"""The model description (`ModelSpec`) and the checkpoint manifest (`MLLMConfig` = the spec + provenance).

`ModelSpec` is the one description of a model: `build_model(spec)` builds it, `TrainConfig.model_spec()`
derives it from the training flags, `load_model(dir)` returns it as `model.spec`, and the manifest stores it.
What is loaded from a checkpoint is chosen by content, never by folder name.

A checkpoint directory holds `config.json` (the manifest) plus the parts it lists under `contents`:
`projector/` (always), `tokenizer/` (always), `adapter/` (peft LoRA), `llm/` (full LLM weights: full
fine-tuning or a merge), `vision_tower/` (tower weights, when the tower was trained or has no hub source).
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from vision_tower.config import DEFAULT_PRESET, IMAGE_ASPECT_RATIOS, PRESETS

from .containment import check_tree, resolve_inside
from .errors import UserError

MANIFEST_NAME = "config.json"
REQUIRED_PARTS = ("projector", "tokenizer")
FORMAT_NAME = "llm2clip-llava"
FORMAT_VERSION = 1
QUANTIZATIONS = ("4bit", "8bit")


class ManifestError(UserError, ValueError):
    """A checkpoint directory is not ours, or its manifest is incomplete or inconsistent with its files."""


class MissingPartError(UserError, FileNotFoundError):
    """A part the manifest lists is not in the checkpoint directory."""


class ModelSpecError(UserError, ValueError):
    """A model description that cannot be built (found before any weights load; see `mllm.validation`)."""


@dataclass
class TowerSpec:
    """Where the vision tower comes from and which features the LLM sees."""

    checkpoint: str | None = "microsoft/LLM2CLIP-EVA02-L-14-336"  # hub id, directory or file; None = config only
    config: str | dict | None = None  # preset name or an EVA-CLIP vision_cfg dict
    select_layer: int = -2
    select_feature: str = "patch"
    name: str | None = None  # human-readable tower name (preset), recorded in projector configs
    revision: str | None = None  # hub branch, tag or commit of `checkpoint` (a hub id); None: the default branch

    @classmethod
    def from_preset(cls, preset: str, **changes) -> "TowerSpec":
        """The tower of a preset: its hub checkpoint (None when it names none), its config and its name."""
        checkpoint = PRESETS[preset].hub_id if preset in PRESETS else cls.checkpoint
        return cls(**{"checkpoint": checkpoint, "config": preset, "name": preset, **changes})


@dataclass
class LoraSpec:
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"  # peft: every Linear of the LLM except lm_head


@dataclass
class ModelSpec:
    """What a model is: base LLM, vision tower, projector, conversation template, image mode, maximum length,
    how the LLM is loaded (quantization) and its LoRA. Everything `build_model` needs, nothing about where a
    trained copy lives (that is the manifest's provenance). `tower` accepts a preset name (None: the default
    preset) or a dict, `lora` a dict. Checked as a whole, cheaply, by `mllm.validation.validate_spec`."""

    llm: str  # base LLM: hub id, absolute path, or a path relative to the checkpoint directory
    llm_revision: str | None = None  # hub branch, tag or commit of `llm`; None: the default branch
    tower: TowerSpec | None = None
    projector_type: str = "mlp2x_gelu"
    template: str = "vicuna_v1"
    image_aspect_ratio: str = "pad"  # image preprocessing mode: pad | crop | resize
    image_token: str = "<image>"
    model_max_length: int = 2048
    quantization: str | None = None  # how the LLM is loaded: "4bit" | "8bit" | None
    lora: LoraSpec | None = None

    def __post_init__(self):
        if self.tower is None or isinstance(self.tower, str):
            self.tower = TowerSpec.from_preset(self.tower or DEFAULT_PRESET)
        elif isinstance(self.tower, dict):
            self.tower = TowerSpec(**self.tower)
        if isinstance(self.lora, dict):
            self.lora = LoraSpec(**self.lora)


@dataclass
class MLLMConfig(ModelSpec):
    """The checkpoint manifest: a `ModelSpec` plus provenance (token id, saved parts, training record, format)."""

    image_token_id: int | None = None  # set once the tokenizer knows the token
    contents: dict = field(default_factory=lambda: {"projector": "projector", "tokenizer": "tokenizer"})
    extra: dict = field(default_factory=dict)  # provenance: stage, steps, data, versions ...
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.tower is None:
            self.tower = TowerSpec()
        elif not isinstance(self.tower, (TowerSpec, dict)):  # a manifest names its tower in full, never a preset
            raise ManifestError(f"manifest tower must be an object, got {type(self.tower).__name__}")
        super().__post_init__()
        if not isinstance(self.tower, TowerSpec) or not isinstance(self.lora, (LoraSpec, type(None))):
            raise ManifestError(f"manifest tower must be an object (and lora an object or null), got "
                                f"{type(self.tower).__name__} / {type(self.lora).__name__}")
        if self.quantization not in (None, *QUANTIZATIONS):
            raise ManifestError(f"quantization must be one of {QUANTIZATIONS} or null, got {self.quantization!r}")
        if self.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ManifestError(f"image_aspect_ratio must be one of {', '.join(IMAGE_ASPECT_RATIOS)}, "
                                f"got {self.image_aspect_ratio!r}")

    @property
    def spec(self) -> ModelSpec:
        """The manifest without its provenance: an independent `ModelSpec` (`build_model(spec)` rebuilds it)."""
        return ModelSpec(**{f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(ModelSpec)})

    @classmethod
    def from_spec(cls, spec: ModelSpec, **provenance) -> "MLLMConfig":
        return cls(**{f.name: copy.deepcopy(getattr(spec, f.name)) for f in fields(ModelSpec)}, **provenance)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MLLMConfig":
        if not isinstance(data, dict):
            raise ManifestError(f"a manifest is a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT_NAME:
            raise ManifestError(f"not an {FORMAT_NAME} manifest (format={data.get('format')!r})")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise ManifestError(
                f"manifest format_version {data['format_version']} is newer than this package supports ({FORMAT_VERSION})"
            )
        known = {f for f in cls.__dataclass_fields__}
        contents = data.get("contents", {"projector": "projector", "tokenizer": "tokenizer"})
        if not isinstance(contents, dict) or not all(isinstance(v, str) for v in contents.values()):
            raise ManifestError(f"manifest contents must map part names to relative paths, got {contents!r}")
        missing = [part for part in REQUIRED_PARTS if part not in contents]
        if missing:
            raise ManifestError(f"manifest contents lists no {' and no '.join(missing)}")
        if not isinstance(data.get("llm"), str):
            raise ManifestError(f"manifest llm must be a hub id or path, got {data.get('llm')!r}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:  # a field of the wrong shape (e.g. tower not an object, unknown tower keys)
            raise ManifestError(f"malformed manifest: {exc}") from exc

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "MLLMConfig":
        """Read and check a checkpoint's manifest: every part it lists must exist inside `directory`."""
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{directory} is not a checkpoint: {MANIFEST_NAME} is missing")
        resolve_inside(directory, MANIFEST_NAME, f"checkpoint {directory}: {MANIFEST_NAME}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
        manifest = cls.from_dict(data)
        manifest.parts(directory)
        return manifest

    def parts(self, directory: str | Path) -> dict[str, Path]:
        """Each part in `contents`, resolved inside the checkpoint directory; refused (one line) when a path is
        absolute, uses `..`, is or holds a symlink leading out, or is missing."""
        resolved = {}
        for key, rel in self.contents.items():
            what = f"checkpoint {directory}: contents[{key!r}]"
            target = resolve_inside(directory, rel, what)
            if not target.exists():
                raise MissingPartError(f"checkpoint {directory} lists {key!r} at {rel!r}, which is missing")
            check_tree(directory, target, what)
            resolved[key] = target
        return resolved

    def resolve_path(self, directory: str | Path, value: str | None) -> str | None:
        """Resolve an external reference (the base LLM or tower): a hub id, an absolute path, or a relative path,
        tried against the checkpoint directory first, then as given (the working directory). Unlike `contents`,
        it may lie anywhere: the user chose it when training."""
        if value is None:
            return None
        candidate = Path(directory) / value
        return str(candidate) if not Path(value).is_absolute() and candidate.exists() else value

    def base_tower(self, directory: str | Path) -> TowerSpec:
        """The tower spec with its checkpoint resolved like the base LLM's (`resolve_path`)."""
        return replace(self.tower, checkpoint=self.resolve_path(directory, self.tower.checkpoint))
