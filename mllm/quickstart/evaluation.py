"""The quickstart's evaluation: held-out accuracy before training, after, and after with every image blanked.

The held-out questions are exported in the standard VQAv2 layout (plus POPE and MME for the yes/no ones)
and run through the same `eval` runner and official-equivalent scorers a real benchmark uses. "Before" is
the model stage 1 starts from (warmed-up backbones, fresh projector, same 4-bit LLM), so the gain is the
training's, not the warm-ups'.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..builder import build_model
from ..config import TowerSpec
from ..eval import export_synthetic
from ..eval.runner import EvalConfig, run_eval
from ..hub import load_tokenizer
from ..serialization import load_model, save_pretrained
from .synthetic import score


def _untrained_checkpoint(root: Path, out: Path, seed: int, projector_type: str) -> Path:
    torch.manual_seed(seed)  # the random projector of the 'before' model
    model, processor = build_model(
        str(root / "stage0" / "lm" / "llm"), tower=TowerSpec(checkpoint=str(root / "stage0" / "tower"), config=None),
        tokenizer=load_tokenizer(root / "base" / "tokenizer"), template="vicuna_v1",
        image_aspect_ratio="pad", quantization="4bit", dtype=torch.float32, model_max_length=512,
        projector_type=projector_type)
    save_pretrained(model, processor, out, extra={"stage": "before training (stage 0 backbones, random projector)"})
    return out


def _run(name: str, model_dir: Path, bench, out: Path, batch_size: int, loaded=(None, None)):
    """The eval runner on an exported benchmark; ``loaded`` = (model, processor) of ``model_dir`` if in memory."""
    return run_eval(EvalConfig(benchmark=bench.name, data=str(bench.data), options=bench.options, model=str(model_dir),
                               output_dir=str(out / name), batch_size=batch_size, num_workers=0, label=name), *loaded)


def _accuracy(result, records: list[dict]) -> dict:
    # the export numbers questions 1..N in held-out order; map back for per-category accuracy
    by_id = {str(n): r["question_id"] for n, r in enumerate(records, 1)}
    predictions = {by_id[q]: a for q, a in result.predictions.items() if q in by_id}
    return {"vqa_accuracy": result.score.main, "exact_match": score(records, predictions),
            "output_dir": str(result.output_dir)}


def evaluate_quickstart(root: Path, out: Path, model_dir: Path, *, batch_size: int, seed: int,
                        projector_type: str = "mlp2x_gelu") -> dict:
    data = root / "data"
    heldout = json.loads((data / "heldout.json").read_text())
    blank = json.loads((data / "heldout_blank.json").read_text())
    exported = export_synthetic(heldout, out / "benchmarks", image_root=data, formats=("vqav2", "pope", "mme"))
    blank_vqa = export_synthetic(blank, out / "benchmarks_blank", image_root=data, formats=("vqav2",))["vqav2"]
    untrained = _untrained_checkpoint(root, out / "untrained", seed, projector_type)
    trained = load_model(model_dir, device="cuda" if torch.cuda.is_available() else "cpu")  # once, for all runs
    results = {
        "before": _accuracy(_run("before", untrained, exported["vqav2"], out, batch_size), heldout),
        "after": _accuracy(_run("after", model_dir, exported["vqav2"], out, batch_size, trained), heldout),
        "blank": _accuracy(_run("blank", model_dir, blank_vqa, out, batch_size, trained), blank),
    }
    for fmt in ("pope", "mme"):  # the yes/no questions through two more official scorers
        if fmt in exported:
            res = _run(f"after_{fmt}", model_dir, exported[fmt], out, batch_size, trained)
            results[f"after_{fmt}"] = {"main": res.score.main, "metrics": {k: v for k, v in res.metrics.items()
                                                                           if isinstance(v, (int, float))}}
    results["chance"] = json.loads((data / "dataset_info.json").read_text())["chance"]
    return results
