"""Training configuration: one dataclass, YAML presets, and a command line where every field is a flag.

Resolution order: dataclass defaults < preset YAML (`--preset`, a name in `mllm/presets/` or a path) <
`--config FILE` < `--field value` flags. The resolved configuration is written into the run directory.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vision_tower.config import DEFAULT_PRESET

from ..config import LoraSpec, ModelSpec, TowerSpec
from ..errors import OneLineErrorParser

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
MODES = ("projector", "qlora", "lora", "full")
LOSS_REDUCTIONS = ("token", "per_device")


@dataclass
class TrainConfig:
    """Every training option, one flat field per command-line flag (`--name value`).

    Each field is `field(default=..., metadata={"help": "one line"})`: `--help` shows that line and the default.
    A field's `--help` group is its `group` metadata, else the group of the field above it. Fields with `spec`
    metadata are the model description, flattened: `model_spec()` assembles them into the `ModelSpec` at those
    paths (`"tower.select_layer"`), so the flags and `build_model` describe a model the same way.
    """

    stage: str = field(default="finetune", metadata={
        "group": "what to train", "help": "pretrain (stage 1) | finetune (stage 2); set by the command"})
    mode: str = field(default="auto", metadata={
        "help": "projector | qlora | lora | full; auto: projector for pretrain, qlora on CUDA else lora"})
    # --- model
    llm: str = field(default="lmsys/vicuna-7b-v1.5", metadata={
        "group": "model", "spec": "llm", "help": "base LLM: hub id or local directory"})
    llm_revision: str | None = field(default=None, metadata={
        "spec": "llm_revision",
        "help": "hub branch, tag or commit of --llm (and its tokenizer); recorded in the checkpoint manifest"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "tokenizer hub id or directory (none: the LLM's own)"})
    tower: str | None = field(default=DEFAULT_PRESET, metadata={
        "spec": ("tower.config", "tower.name"),
        "help": "vision tower preset or config JSON (none: the config saved with tower_checkpoint)"})
    tower_checkpoint: str | None = field(default=TowerSpec.checkpoint, metadata={
        "spec": "tower.checkpoint",
        "help": "tower weights: hub id, directory or file (none: the hub checkpoint of the tower preset)"})
    tower_revision: str | None = field(default=None, metadata={
        "spec": "tower.revision",
        "help": "hub branch, tag or commit of --tower_checkpoint; recorded in the checkpoint manifest"})
    select_layer: int = field(default=TowerSpec.select_layer, metadata={
        "spec": "tower.select_layer", "help": "tower hidden state the projector reads (LLaVA: -2, the second to last)"})
    select_feature: str = field(default=TowerSpec.select_feature, metadata={
        "spec": "tower.select_feature",
        "help": "patch (drop the CLS token) | cls_patch (keep it; towers with a CLS token only)"})
    projector_type: str = field(default=ModelSpec.projector_type, metadata={
        "spec": "projector_type", "help": "linear | mlp{N}x_gelu | identity | any type in projector.registry"})
    pretrained_projector: str | None = field(default=None, metadata={
        "help": "stage-1 output dir (or its projector/ dir) to initialise the projector from"})
    init_from: str | None = field(default=None, metadata={"help": (
        "finetune: start from this whole checkpoint (e.g. an imported LLaVA-1.5); its LLM, tokenizer, tower, "
        "projector, template and image mode replace the model fields")})
    template: str = field(default=ModelSpec.template, metadata={
        "spec": "template", "help": "conversation template: plain | vicuna_v1 | chat_template (the tokenizer's)"})
    image_aspect_ratio: str = field(default=ModelSpec.image_aspect_ratio, metadata={
        "spec": "image_aspect_ratio", "help": "image preprocessing: pad (LLaVA-1.5) | crop | resize"})
    model_max_length: int = field(default=ModelSpec.model_max_length, metadata={
        "spec": "model_max_length", "help": "maximum tokens per sample, image tokens included"})
    unfreeze_tower_blocks: int = field(default=0, metadata={
        "help": "train the last N tower blocks that feed select_layer (0: the tower stays frozen)"})
    lora_r: int = field(default=LoraSpec.r, metadata={"spec": "lora.r", "help": "LoRA rank (modes lora, qlora)"})
    lora_alpha: int = field(default=LoraSpec.alpha, metadata={
        "spec": "lora.alpha", "help": "LoRA alpha (the update is scaled by alpha / r)"})
    lora_dropout: float = field(default=LoraSpec.dropout, metadata={"spec": "lora.dropout", "help": "LoRA dropout"})
    lora_target_modules: str = field(default=LoraSpec.target_modules, metadata={
        "spec": "lora.target_modules", "help": "LoRA targets: all-linear (every LLM linear but lm_head) or module names"})
    dtype: str = field(default="auto", metadata={"help": "compute dtype: auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32"})
    gradient_checkpointing: bool = field(default=True, metadata={
        "help": "recompute the LLM's activations in the backward pass to save memory"})
    # --- data
    data_path: str = field(default="", metadata={
        "group": "data", "help": "training data: LLaVA JSON (a list) or JSONL"})
    image_folder: str = field(default="", metadata={"help": "directory the records' image paths are relative to"})
    group_by_modality_length: bool = field(default=True, metadata={
        "help": "batch image and text-only samples apart, grouped by length (LLaVA's sampler)"})
    num_workers: int = field(default=4, metadata={"help": "DataLoader worker processes"})
    strict_data: bool = field(default=False, metadata={
        "help": "stop at the first bad sample instead of skipping and counting it"})
    # --- optimisation
    learning_rate: float = field(default=2e-4, metadata={
        "group": "optimisation", "help": "peak learning rate of the LLM / LoRA (and of the rest unless set below)"})
    projector_lr: float | None = field(default=None, metadata={
        "help": "projector learning rate (LLaVA's --mm_projector_lr; none: learning_rate)"})
    tower_lr: float | None = field(default=None, metadata={
        "help": "learning rate of unfrozen tower blocks (none: learning_rate)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (never on biases and norms)"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "fraction of the steps spent on linear warm-up"})
    lr_scheduler: str = field(default="cosine", metadata={
        "help": "schedule after warm-up (a transformers get_scheduler name: cosine, linear, constant, ...)"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs over the data (fractions allowed)"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; > 0 overrides num_train_epochs"})
    global_batch_size: int = field(default=128, metadata={
        "help": "samples per optimizer step over all processes (gradient accumulation is derived from it)"})
    micro_batch_size: int = field(default=16, metadata={"help": "samples per process per forward pass"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip the gradient norm to this (0: no clipping)"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    loss_reduction: str = field(default="token", metadata={"help": (
        "token: one token-weighted mean over the global batch (exact under accumulation and any number of ranks); "
        "per_device: mean of per-micro-batch means over devices and accumulation steps, as HF Trainer computes it "
        "for LLaVA's scripts")})
    tf32: bool = field(default=True, metadata={"help": "TF32 matmuls on Ampere+ GPUs, as LLaVA's --tf32 True (no effect on CPU)"})
    seed: int = field(default=42, metadata={"help": "random seed (new weights, data order, dropout)"})
    # --- output
    output_dir: str = field(default="runs/finetune", metadata={
        "group": "output", "help": "run directory: checkpoints, the final model, logs"})
    save_steps: int = field(default=500, metadata={
        "help": "save a checkpoint every N optimizer steps (0: only the final model)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept (the oldest are removed)"})
    logging_steps: int = field(default=10, metadata={"help": "log loss, learning rate and throughput every N steps"})
    report_to: list[str] = field(default_factory=list, metadata={
        "help": "trackers, comma-separated: tensorboard, wandb (empty: none)"})
    resume_from: str | None = field(default=None, metadata={
        "help": "resume from a run dir (its latest checkpoint) or a checkpoint dir"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "start a new run in an output_dir that holds another run, deleting its checkpoints and model "
                "(without it, such an output_dir is refused)"})
    resume_ignore_mismatch: bool = field(default=False, metadata={
        "help": "resume even though the data file, process count, batch sizes or seed differ from the "
                "checkpoint's (each difference is logged; the position in the data is kept as a sample count)"})
    max_nonfinite_grad_steps: int = field(default=10, metadata={
        "help": "optimizer updates skipped for a non-finite gradient norm (step and sample ids logged) before "
                "the run stops; 0 stops at the first"})

    def __post_init__(self):
        if self.stage not in ("pretrain", "finetune"):
            raise ValueError(f"stage must be pretrain or finetune, got {self.stage!r}")
        if self.mode not in (*MODES, "auto"):
            raise ValueError(f"mode must be one of {MODES} or auto, got {self.mode!r}")
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {self.loss_reduction!r}")
        if self.micro_batch_size < 1 or self.global_batch_size < 1:
            raise ValueError("global_batch_size and micro_batch_size must be >= 1")

    def resolved_mode(self, on_cuda: bool) -> str:
        if self.mode != "auto":
            return self.mode
        if self.stage == "pretrain":
            return "projector"
        return "qlora" if on_cuda else "lora"

    def gradient_accumulation_steps(self, world_size: int) -> int:
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size "
                f"{self.micro_batch_size} x {world_size} process(es) = {per_step}"
            )
        return self.global_batch_size // per_step

    def model_spec(self, mode: str, quantization: str | None = None) -> ModelSpec:
        """The `ModelSpec` these flags describe for a resolved `mode`: LoRA only in modes lora/qlora; the LLM
        loaded as `quantization` (default: 4bit for qlora, as `distributed.plan_setup` decides)."""
        values: dict = {"tower": {}, "lora": {}}
        for f in dataclasses.fields(self):
            paths = f.metadata.get("spec", ())
            for path in (paths,) if isinstance(paths, str) else paths:
                *parents, leaf = path.split(".")
                target = values
                for parent in parents:
                    target = target[parent]
                target[leaf] = getattr(self, f.name)
        if mode not in ("lora", "qlora"):
            values["lora"] = None
        if quantization is None and mode == "qlora":
            quantization = "4bit"
        return ModelSpec(**values, quantization=quantization)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_preset(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"preset {name_or_path!r} not found; built-in presets: {available}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a preset must be a mapping of field: value")
    return data


def _field_parser(tp):
    """argparse `type` for a dataclass field annotation (str | None, bool, list[str], ...)."""
    is_union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    hints = typing.get_args(tp) if is_union else (tp,)
    base = next((h for h in hints if h is not type(None)), str)
    allows_none = type(None) in hints
    origin = typing.get_origin(base)

    def parse(text: str):
        if allows_none and text.lower() in ("none", "null"):
            return None
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        if origin is list:
            return [item for item in text.split(",") if item]
        return base(text)

    parse.__name__ = getattr(base, "__name__", "value")  # argparse says "invalid int value: 'abc'"
    return parse


def _shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "(empty)"
    return str(value) if value != "" else "(empty)"


def _metavar(tp) -> str:
    is_union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    base = next((h for h in typing.get_args(tp) if h is not type(None)), str) if is_union else tp
    if typing.get_origin(base) is list:
        return "A,B"
    return {bool: "BOOL", int: "INT", float: "FLOAT"}.get(base, "STR")


def field_default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def build_parser(prog: str, description: str, default_preset: str | None = None) -> argparse.ArgumentParser:
    """One flag per `TrainConfig` field, grouped, each with its description and default (the built-in one, and
    the value of `default_preset` where that preset sets the field)."""
    parser = OneLineErrorParser(prog=prog, description=description,
                                usage="%(prog)s [--preset NAME] [--config FILE] [--FIELD VALUE ...]")
    parser.add_argument("--preset", metavar="NAME", help="built-in preset name or YAML path"
                        + (f" (default: {default_preset})" if default_preset else " (defaults per command)"))
    parser.add_argument("--config", metavar="FILE", help="YAML file with field overrides, applied after the preset")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    preset_values = load_preset(default_preset) if default_preset else {}
    hints = typing.get_type_hints(TrainConfig)
    groups: dict[str, argparse._ArgumentGroup] = {}
    group_name = "options"
    for f in dataclasses.fields(TrainConfig):
        group_name = f.metadata.get("group", group_name)
        if f.name == "stage":
            continue
        group = groups.get(group_name) or groups.setdefault(group_name, parser.add_argument_group(group_name))
        builtin = field_default(f)
        if f.name in preset_values and preset_values[f.name] != builtin:
            default = f"default {_shown(preset_values[f.name])} from preset {default_preset}, built-in {_shown(builtin)}"
        else:
            default = f"default {_shown(builtin)}"
        text = f"{f.metadata.get('help', '(no description)')} [{default}]".replace("%", "%%")
        flag = {"nargs": "?", "const": True} if hints[f.name] is bool else {}  # a bare --flag means true
        group.add_argument(f"--{f.name}", dest=f.name, type=_field_parser(hints[f.name]), default=argparse.SUPPRESS,
                           metavar=_metavar(hints[f.name]), help=text, **flag)
    return parser


def resolve_config(stage: str, args: argparse.Namespace, default_preset: str) -> TrainConfig:
    values: dict = {}
    values.update(load_preset(args.preset or default_preset))
    if args.config:
        values.update(load_preset(args.config))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown configuration field(s): {unknown}")
    for name in known:
        if hasattr(args, name):  # given on the command line (possibly as null)
            values[name] = getattr(args, name)
    values["stage"] = stage
    return TrainConfig(**values)


def save_config(config: TrainConfig, directory: str | Path) -> Path:
    path = Path(directory) / "train_config.json"
    path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return path
