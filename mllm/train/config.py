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

from ..errors import OneLineErrorParser

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
MODES = ("projector", "qlora", "lora", "full")
LOSS_REDUCTIONS = ("token", "per_device")


@dataclass
class TrainConfig:
    # --- what to train
    stage: str = "finetune"  # pretrain (stage 1) | finetune (stage 2)
    mode: str = "auto"  # projector | qlora | lora | full; auto: projector for pretrain, qlora on CUDA else lora
    # --- model
    llm: str = "lmsys/vicuna-7b-v1.5"
    llm_revision: str | None = field(default=None, metadata={
        "help": "hub branch, tag or commit of --llm (and its tokenizer); recorded in the checkpoint manifest"})
    tokenizer: str | None = None  # defaults to the LLM's
    tower: str | None = "llm2clip-eva02-l-14-336"  # preset name (null: the config saved with tower_checkpoint)
    tower_checkpoint: str | None = "microsoft/LLM2CLIP-EVA02-L-14-336"  # hub id, dir or file; null: preset random init
    tower_revision: str | None = field(default=None, metadata={
        "help": "hub branch, tag or commit of --tower_checkpoint; recorded in the checkpoint manifest"})
    select_layer: int = -2
    select_feature: str = "patch"
    projector_type: str = "mlp2x_gelu"
    pretrained_projector: str | None = None  # stage-1 output dir (or its projector/ dir) to initialise from
    init_from: str | None = field(default=None, metadata={"help": (
        "finetune: start from this whole checkpoint (e.g. an imported LLaVA-1.5); its LLM, tokenizer, tower, "
        "projector, template and image mode replace the model fields")})
    template: str = "vicuna_v1"
    image_aspect_ratio: str = "pad"
    model_max_length: int = 2048
    unfreeze_tower_blocks: int = 0
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    gradient_checkpointing: bool = True
    # --- data
    data_path: str = ""
    image_folder: str = ""
    group_by_modality_length: bool = True
    num_workers: int = 4
    strict_data: bool = False
    # --- optimisation
    learning_rate: float = 2e-4
    projector_lr: float | None = None  # separate lr for the projector (LLaVA's --mm_projector_lr)
    tower_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    global_batch_size: int = 128
    micro_batch_size: int = 16
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    loss_reduction: str = field(default="token", metadata={"help": (
        "token: one token-weighted mean over the global batch (exact under accumulation and any number of ranks); "
        "per_device: mean of per-micro-batch means over devices and accumulation steps, as HF Trainer computes it "
        "for LLaVA's scripts")})
    tf32: bool = field(default=True, metadata={"help": "TF32 matmuls on Ampere+ GPUs, as LLaVA's --tf32 True (no effect on CPU)"})
    seed: int = 42
    # --- output
    output_dir: str = "runs/finetune"
    save_steps: int = 500
    save_total_limit: int = 2
    logging_steps: int = 10
    report_to: list[str] = field(default_factory=list)  # tensorboard, wandb
    resume_from: str | None = None  # a run dir (latest checkpoint) or a checkpoint dir
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


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=prog, description=description)
    parser.add_argument("--preset", help="built-in preset name or YAML path (defaults per command)")
    parser.add_argument("--config", help="YAML file with field overrides, applied after the preset")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "stage":
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = {"nargs": "?", "const": True} if hints[f.name] is bool else {}  # a bare --flag means true
        parser.add_argument(f"--{f.name}", dest=f.name, type=_field_parser(hints[f.name]), default=argparse.SUPPRESS,
                            metavar=f.name.upper(), help=f"(built-in default {default!r}; presets may set it)", **flag)
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
