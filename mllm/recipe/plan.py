"""The recipe as a list of steps: per tower stage 1 -> stage 2 -> each benchmark, then `compare`.

A step is one existing command with its arguments (`pretrain`, `finetune`, `eval`, `compare`), its output
folder and its estimate. Its fingerprint (a hash of the command line) is what its completion marker records,
so a finished step is skipped only when it would run the same command again.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..data import llava_layout as L
from ..train.config import load_preset
from .config import RecipeConfig, Stage, Tower
from .estimates import Estimate, count_records, eval_estimate, stage_estimate

_PRESENTATION_FLAGS = ("--no-progress",)


@dataclass
class Step:
    id: str  # "clip/stage1", "llm2clip/eval/pope", "compare"
    command: str  # pretrain | finetune | eval | compare
    args: list[str]  # the command's arguments (without the command name)
    output: Path  # the folder it writes
    estimate: Estimate
    tower: Tower | None = None
    num_processes: int = 1
    accelerate_config: str | None = None
    metrics: Path | None = None  # eval: its metrics.json
    meta: dict = field(default_factory=dict)

    @property
    def training(self) -> bool:
        return self.command in ("pretrain", "finetune")

    @property
    def fingerprint(self) -> str:
        """What the step computes: its command and arguments, not how it is run (process count, launcher,
        progress display), which may change between a run and its resumption."""
        payload = [self.command, [a for a in self.args if a not in _PRESENTATION_FLAGS]]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def _flag_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def train_flags(fields: dict) -> list[str]:
    """TrainConfig fields -> `--name value` flags (the training commands' own syntax)."""
    out = []
    for name, value in fields.items():
        out += [f"--{name}", _flag_value(value)]
    return out


def _resolved_mode(command: str, preset: str, train: dict) -> str:
    """The mode a training step will run in, for the estimates (auto: projector / qlora as on CUDA)."""
    mode = train.get("mode") or load_preset(preset).get("mode", "auto")
    if mode != "auto":
        return mode
    return "projector" if command == "pretrain" else "qlora"


def _stage_step(config: RecipeConfig, tower: Tower, number: int, out: Path) -> Step:
    stage: Stage = config.stage(number)
    command = "pretrain" if number == 1 else "finetune"
    root = Path(config.data_root)
    fields = {"llm": config.llm, "tower": tower.tower, "tower_checkpoint": tower.tower_checkpoint,
              "data_path": str(root / stage.data_path), "image_folder": str(root / stage.image_folder)}
    if number == 2:
        fields["pretrained_projector"] = str(out / tower.key / "stage1")
    fields.update(config.train)
    fields.update(stage.train)
    fields.update(tower.train)
    preset_values = {**load_preset(stage.preset), **fields}
    spec = L.PRETRAIN if number == 1 else L.MIX665K
    records, basis = count_records(root / stage.data_path, Path(spec.path).name, spec.records)
    mode = _resolved_mode(command, stage.preset, fields)
    estimate = stage_estimate(number, mode, config.llm_size, preset_values, records, basis)
    output = out / tower.key / f"stage{number}"
    args = ["--preset", stage.preset, *train_flags(fields), "--output_dir", str(output)]
    return Step(f"{tower.key}/stage{number}", command, args, output, estimate, tower, stage.num_processes,
                stage.accelerate_config, meta={"mode": mode})


def build_plan(config: RecipeConfig) -> list[Step]:
    out = Path(config.output_dir)
    steps: list[Step] = []
    eval_flags = []
    for key, value in (config.eval or {}).items():
        if isinstance(value, bool):
            eval_flags += [f"--{key.replace('_', '-')}"] if value else []
        elif value is not None:
            eval_flags += [f"--{key.replace('_', '-')}", str(value)]
    for tower in config.towers:
        steps.append(_stage_step(config, tower, 1, out))
        steps.append(_stage_step(config, tower, 2, out))
        model = out / tower.key / "stage2"
        for bench in config.benchmarks:
            output = out / tower.key / "eval" / bench.name
            args = ["--model", str(model), "--benchmark", bench.name, "--data", str(bench.data_path(config.eval_root)),
                    "--output-dir", str(output), "--label", tower.label, *eval_flags]
            for k, v in bench.options.items():
                args += ["--option", f"{k}={_flag_value(v)}"]
            steps.append(Step(f"{tower.key}/eval/{bench.name}", "eval", args, output,
                              eval_estimate(bench.name, config.llm_size, (config.eval or {}).get("limit")), tower,
                              metrics=output / "metrics.json"))
    if len(config.towers) >= 2:
        output = out / "comparison"
        compare = config.compare or {}
        args = [f"{t.label}={out / t.key / 'eval'}" for t in config.towers]
        args += ["--output-dir", str(output), "--title", compare.get("title") or config.name]
        for metric in compare.get("metrics") or []:
            args += ["--metric", metric]
        steps.append(Step("compare", "compare", args, output, Estimate(0.0, 0.0, "no GPU")))
    return steps
