"""Expected GPU hours and disk per recipe step, from LLaVA-1.5's published training times, scaled.

Published (haotian-liu/LLaVA README, "Train"): stage 1 takes ~3.5 h for LLaVA-v1.5-7B and ~5.5 h for 13B on
8x A100-80G (558,128 samples, one epoch); stage 2 (full fine-tuning) ~10 h for 7B on 8x A100-40G and ~20 h for
13B on 8x A100-80G (665,298 samples, one epoch). Hence A100-hours per sample for a 6.74 B and a 13.0 B LLM.

Scaling, each an assumption printed with the plan:
- LLM size: the reference with the nearest parameter count, scaled linearly in parameters;
- samples: the step's sample count (max_steps x global batch when set, else epochs x records) over LLaVA's;
- tower: none (EVA02-L-14-336 and CLIP ViT-L/14-336 both give 576 tokens; the LLM's share dominates);
- stage 2 QLoRA / LoRA: LLaVA publishes no time; taken as full fine-tuning's (unmeasured);
- evaluation: no published times at all; questions x seconds per answer (0.1 s short, 0.3 s multiple choice
  with MMBench's rotations, 3 s free-form) x the LLM-size factor, for one A100 (a rough guess, not measured).
Disk: parameter counts x bytes for what each step writes (see `stage_disk_gb`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .config import LLMSize

# (params_b, A100-hours per 1,000 samples): published wall time x 8 GPUs / LLaVA's sample count
_STAGE1_REF = ((6.74, 3.5 * 8 / 558.128), (13.0, 5.5 * 8 / 558.128))
_STAGE2_REF = ((6.74, 10.0 * 8 / 665.298), (13.0, 20.0 * 8 / 665.298))
# questions per benchmark as `eval` asks them by default (eval.zip's question files where counted there: GQA,
# VizWiz, TextVQA, POPE, MME, ScienceQA-IMG 2,017 of 4,241, MM-Vet; the others as the benchmarks publish them) and
# the answer style that sets the time per question
EVAL_QUESTIONS = {"vqav2": (107_394, "short"), "gqa": (12_578, "short"), "vizwiz": (8_000, "short"),
                  "textvqa": (5_000, "short"), "pope": (8_910, "short"), "mme": (2_374, "short"),
                  "sqa": (2_017, "short"), "mmbench": (4_377, "mcq"), "mmbench_cn": (4_329, "mcq"),
                  "seed": (17_990, "short"), "llavabench": (60, "long"), "mmvet": (218, "long")}
_SECONDS_PER_QUESTION = {"short": 0.1, "mcq": 0.3, "long": 3.0}
_REF_EVAL_PARAMS_B = 6.74


@dataclass
class Estimate:
    gpu_hours: float  # A100-equivalent hours, all processes together
    disk_gb: float  # what the step leaves on disk
    basis: str  # one line: how it was derived


def _per_1k_samples(refs, params_b: float) -> tuple[float, float]:
    ref_params, hours = min(refs, key=lambda r: abs(r[0] - params_b))
    return hours * params_b / ref_params, ref_params


def count_records(path: Path, known_name: str, known_records: int) -> tuple[int | None, str]:
    """Records of a training JSON without reading a large file: LLaVA's file by name, a small file by
    counting, a large one by its size relative to LLaVA's."""
    if path.name == known_name:
        return known_records, "LLaVA's count"
    if not path.is_file():
        return None, "file missing"
    if path.stat().st_size <= 200_000_000:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return (len(data), "counted") if isinstance(data, list) else (None, "not a JSON list")
        except (OSError, ValueError):
            return None, "unreadable"
    return None, "too large to count here"


def samples_of(train: dict, records: int | None) -> int | None:
    if int(train.get("max_steps", -1) or -1) > 0:
        return int(train["max_steps"]) * int(train.get("global_batch_size", 128))
    if records is None:
        return None
    return round(float(train.get("num_train_epochs", 1.0)) * records)


def lora_params(size: LLMSize, r: int) -> int:
    """LoRA on every linear of a Llama-style decoder (q, k, v, o, gate, up, down; multi-head attention)."""
    h, i = size.hidden_size, size.intermediate_size
    return r * size.num_layers * (4 * (h + h) + 2 * (h + i) + (i + h))


def projector_params(size: LLMSize, vision_hidden: int = 1024) -> int:
    """mlp2x_gelu: vision_hidden -> hidden -> hidden."""
    h = size.hidden_size
    return vision_hidden * h + h + h * h + h


def stage_disk_gb(stage: int, mode: str, size: LLMSize, train: dict) -> float:
    """Checkpoints (save_total_limit of them: trainable weights fp32 + AdamW's two moments + the loadable
    model) and the final model."""
    keep = max(int(train.get("save_total_limit", 2) or 0), 1)
    proj = projector_params(size)
    if stage == 1 or mode == "projector":
        trainable, model_bytes = proj, proj * 4
    elif mode in ("lora", "qlora"):
        trainable = lora_params(size, int(train.get("lora_r", 128))) + proj
        model_bytes = trainable * 4
    else:  # full: the LLM in bf16 in the model, fp32 + moments in the resume state
        trainable = int(size.params_b * 1e9) + proj
        model_bytes = trainable * 2
    checkpoint = trainable * 4 * 3 + model_bytes
    return (keep * checkpoint + model_bytes) / 1e9


def stage_estimate(stage: int, mode: str, size: LLMSize, train: dict, records: int | None,
                   records_basis: str) -> Estimate:
    per_1k, ref = _per_1k_samples(_STAGE1_REF if stage == 1 else _STAGE2_REF, size.params_b)
    samples = samples_of(train, records)
    disk = stage_disk_gb(stage, mode, size, train)
    if samples is None:
        return Estimate(float("nan"), disk, f"unknown sample count ({records_basis})")
    ref_name = f"LLaVA-1.5-{'7' if ref < 10 else '13'}B"
    basis = (f"{ref_name} stage {stage} published time x {size.params_b:g}/{ref:g} B params x {samples:,} samples"
             + ("" if stage == 1 or mode == "full" else f"; {mode}: assumed = full fine-tuning (no published time)"))
    return Estimate(per_1k * samples / 1000, disk, basis)


def eval_estimate(benchmark: str, size: LLMSize, limit: int | None = None) -> Estimate:
    questions, style = EVAL_QUESTIONS[benchmark]
    if limit:
        questions = min(questions, int(limit))
    rotations = 3 if style == "mcq" else 1  # MMBench's circular evaluation asks each question per rotation
    hours = questions * _SECONDS_PER_QUESTION[style] * (size.params_b / _REF_EVAL_PARAMS_B) / 3600
    disk = questions * rotations * 600 / 1e9  # predictions.jsonl + cache: ~600 bytes per answer
    return Estimate(hours, disk, ("eval: questions x 0.1 s (short answer), 0.3 s (multiple choice, MMBench's "
                                  "rotations), 3 s (free-form) x LLM params/6.74 B on one A100: no published times, "
                                  "a guess"))
