"""The recipe file: towers, LLM, the two training stages, the benchmarks and the comparison, in one YAML.

`paper.yaml` next to this module is the paper's experiment (LLaVA-1.5-7B with OpenAI CLIP ViT-L/14-336 vs
with LLM2CLIP EVA02-L-14-336) and the default of `llm2clip-llava reproduce`. Relative paths (data root,
output folder, models) are relative to the working directory, as in LLaVA's scripts. Every key is checked
when the file is read; an unknown or missing one is one line naming it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..data.llava_layout import EVAL_PIECES
from ..errors import UserError

PAPER_RECIPE = Path(__file__).resolve().parent / "paper.yaml"
STAGE2_PRESETS = ("finetune", "finetune_lora", "finetune_full")  # QLoRA (default); LLaVA's exact LoRA / full


class RecipeError(UserError):
    """The recipe file (or an override) is wrong; the message names the key."""


@dataclass
class LLMSize:
    """The base LLM's shape, for the time and disk estimates only (nothing is loaded to plan)."""

    params_b: float = 6.74  # Vicuna-7B
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32


@dataclass
class Tower:
    key: str  # folder name under the output folder
    label: str  # the run's name in `compare` and the report
    tower: str | None  # preset name or config (TrainConfig.tower)
    tower_checkpoint: str | None  # hub id, folder or file (TrainConfig.tower_checkpoint)
    train: dict = field(default_factory=dict)  # TrainConfig fields for both stages of this tower
    paper: dict = field(default_factory=dict)  # benchmark -> the paper's published headline number


@dataclass
class Stage:
    preset: str
    data_path: str  # relative to the data root
    image_folder: str  # relative to the data root
    train: dict = field(default_factory=dict)  # TrainConfig field overrides
    accelerate_config: str | None = None  # with num_processes > 1: `accelerate launch --config_file`
    num_processes: int = 1


@dataclass
class Benchmark:
    name: str
    data: str | None = None  # relative to <data root>/eval; None: eval.zip's folder if extracted, else the originals
    options: dict = field(default_factory=dict)  # `eval --option KEY=VALUE`

    def data_path(self, eval_root: Path) -> Path:
        return eval_root / (self.data or EVAL_PIECES[self.name].eval_data(eval_root))


@dataclass
class RecipeConfig:
    name: str
    output_dir: str
    data_root: str
    llm: str
    towers: list[Tower]
    stage1: Stage
    stage2: Stage
    benchmarks: list[Benchmark]
    llm_size: LLMSize = field(default_factory=LLMSize)
    train: dict = field(default_factory=dict)  # TrainConfig fields for every training step
    eval: dict = field(default_factory=dict)  # `eval` flags: batch_size, num_workers, max_new_tokens, limit, ...
    compare: dict = field(default_factory=dict)  # title, metrics (extra rows)
    source: str = ""  # the file it was read from

    @property
    def eval_root(self) -> Path:
        return Path(self.data_root) / "eval"

    def stage(self, number: int) -> Stage:
        return self.stage1 if number == 1 else self.stage2


_EVAL_FLAGS = {"batch_size", "num_workers", "max_new_tokens", "limit", "device", "quantization", "dtype",
               "merge_on_load", "protocol", "no_progress"}
_COMPARE_KEYS = {"title", "metrics"}


def _fields(cls, data: dict, where: str, required: tuple[str, ...] = ()) -> dict:
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; known: {sorted(known - {'source'})}")
    missing = [k for k in required if k not in data]
    if missing:
        raise RecipeError(f"{where}: missing key(s) {missing}")
    return dict(data)


def _stage(data: dict, where: str) -> Stage:
    stage = Stage(**_fields(Stage, data, where, ("preset", "data_path", "image_folder")))
    if stage.num_processes < 1:
        raise RecipeError(f"{where}.num_processes must be >= 1, got {stage.num_processes}")
    return stage


def _benchmark(entry, where: str) -> Benchmark:
    if isinstance(entry, str):
        entry = {"name": entry}
    data = _fields(Benchmark, entry, where, ("name",))
    name = data["name"]
    if name not in EVAL_PIECES:
        raise RecipeError(f"{where}: unknown benchmark {name!r}; known: {', '.join(EVAL_PIECES)}")
    return Benchmark(**data)


def recipe_from_dict(raw: dict, source: str = "") -> RecipeConfig:
    data = _fields(RecipeConfig, raw, source or "recipe",
                   ("name", "output_dir", "data_root", "llm", "towers", "stage1", "stage2", "benchmarks"))
    towers = data.pop("towers")
    if not isinstance(towers, list) or len(towers) < 2:
        raise RecipeError(f"{source}: towers must list at least two towers (the first is the baseline)")
    data["towers"] = [Tower(**_fields(Tower, t, f"towers[{i}]", ("key", "label", "tower", "tower_checkpoint")))
                      for i, t in enumerate(towers)]
    for attr in ("key", "label"):
        values = [getattr(t, attr) for t in data["towers"]]
        if len(set(values)) != len(values):
            raise RecipeError(f"{source}: tower {attr}s must differ, got {values}")
    data["stage1"], data["stage2"] = _stage(data["stage1"], "stage1"), _stage(data["stage2"], "stage2")
    data["benchmarks"] = [_benchmark(b, f"benchmarks[{i}]") for i, b in enumerate(data["benchmarks"] or [])]
    names = [b.name for b in data["benchmarks"]]
    if len(set(names)) != len(names):
        raise RecipeError(f"{source}: a benchmark is listed twice: {names}")
    data["llm_size"] = LLMSize(**_fields(LLMSize, data.get("llm_size") or {}, "llm_size"))
    for key, allowed in (("eval", _EVAL_FLAGS), ("compare", _COMPARE_KEYS)):
        unknown = sorted(set(data.get(key) or {}) - allowed)
        if unknown:
            raise RecipeError(f"{key}: unknown key(s) {unknown}; known: {sorted(allowed)}")
    return RecipeConfig(**data, source=source)


def load_recipe(path: str | Path | None = None) -> RecipeConfig:
    path = Path(path) if path else PAPER_RECIPE
    if not path.is_file():
        raise RecipeError(f"recipe file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    return recipe_from_dict(raw or {}, str(path))


def apply_overrides(config: RecipeConfig, *, data_root: str | None = None, output_dir: str | None = None,
                    stage2_preset: str | None = None, towers: list[str] | None = None,
                    benchmarks: list[str] | None = None, num_processes: int | None = None) -> RecipeConfig:
    """The command line's changes to the file's settings."""
    changes: dict = {}
    if data_root:
        changes["data_root"] = data_root
    if output_dir:
        changes["output_dir"] = output_dir
    if stage2_preset:
        if stage2_preset not in STAGE2_PRESETS and not Path(stage2_preset).suffix:
            raise RecipeError(f"--stage2 {stage2_preset!r}: choose {', '.join(STAGE2_PRESETS)} or a preset YAML path")
        changes["stage2"] = dataclasses.replace(config.stage2, preset=stage2_preset)
    if towers:
        keys = [t.key for t in config.towers]
        unknown = sorted(set(towers) - set(keys))
        if unknown:
            raise RecipeError(f"--towers: unknown tower(s) {unknown}; this recipe has {keys}")
        changes["towers"] = [t for t in config.towers if t.key in towers]
    if benchmarks is not None:
        listed = {b.name: b for b in config.benchmarks}
        unknown = [b for b in benchmarks if b not in listed and b not in EVAL_PIECES]
        if unknown:
            raise RecipeError(f"--benchmarks: unknown benchmark(s) {unknown}; known: {', '.join(EVAL_PIECES)}")
        changes["benchmarks"] = [listed.get(b) or _benchmark(b, "--benchmarks") for b in benchmarks]
    if num_processes:
        changes["stage1"] = dataclasses.replace(changes.get("stage1", config.stage1), num_processes=num_processes)
        changes["stage2"] = dataclasses.replace(changes.get("stage2", config.stage2), num_processes=num_processes)
    return dataclasses.replace(config, **changes)
