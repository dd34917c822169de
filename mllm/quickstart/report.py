"""The quickstart's closing report: what ran, time per stage, accuracies, the verdict, where the model is."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from projector import image_token_count

from ..paths import default_model_dir

ACCURACY_BAR = 0.90  # held-out exact-match accuracy after training
BLANK_MARGIN = 0.15  # blanked images may score at most chance + 15 points


def _publish(model_dir: Path, link: Path) -> None:
    """Make `<root>/model` the trained checkpoint (a symlink where possible, else a copy)."""
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        shutil.rmtree(link)
    try:
        os.symlink(model_dir.name, link, target_is_directory=True)
    except OSError:
        shutil.copytree(model_dir, link)


def write_report(root: Path, q, results: dict, profile, seed: int, wall_s: float, *, publish: bool = True) -> dict:
    ev = results["eval"]
    acc = {k: ev[k]["exact_match"]["overall"]["accuracy"] for k in ("before", "after", "blank")}
    chance = ev["chance"]["overall"]
    blank_bar = max(chance["uniform"], chance["majority"]) + BLANK_MARGIN
    passed = acc["after"] >= ACCURACY_BAR and acc["blank"] <= blank_bar
    categories = sorted(k.split("/", 1)[1] for k in ev["after"]["exact_match"] if k.startswith("category/"))
    model_link = root / "model"
    if publish:
        _publish(q.model_dir(), model_link)
    report = {
        "passed": passed, "accuracy": acc, "chance": chance, "blank_bar": blank_bar, "accuracy_bar": ACCURACY_BAR,
        "per_category": {c: {k: ev[k]["exact_match"][f"category/{c}"]["accuracy"] for k in ("before", "after", "blank")}
                         for c in categories},
        "official_scorers": {k: ev[k]["main"] for k in ("after_pope", "after_mme") if k in ev},
        "stage_seconds": q.timings, "reused_stages": q.reused, "wall_seconds": round(wall_s, 1),
        "profile": asdict(profile), "seed": seed, "model_dir": str(model_link),
        "heldout_questions": ev["after"]["exact_match"]["overall"]["n"],
        "image_tokens": image_token_count(profile.projector_type, (profile.image_size // profile.patch_size,) * 2),
    }
    (root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "", "=" * 78, "llm2clip-llava quickstart report", "=" * 78,
        "What ran: synthetic shapes data -> tiny EVA02 tower + tiny Llama (32k SentencePiece vocab) -> stage 0",
        "warm-ups standing in for pretrained backbones (tower: attribute classification; LLM: language modelling",
        "with captions in context) -> stage 1 projector (llm2clip-llava pretrain) -> stage 2 4-bit QLoRA",
        "(llm2clip-llava finetune) -> held-out evaluation through the eval runner (VQAv2 scorer).",
        f"task: {profile.task}; projector: {profile.projector_type} ({report['image_tokens']} image tokens per image)",
        "",
        "time per stage (s): " + ", ".join(f"{k} {v:.1f}" + (" (reused)" if k in q.reused else "")
                                          for k, v in q.timings.items()) + f"; total {wall_s:.1f}",
        "",
        f"held-out accuracy ({report['heldout_questions']} questions, exact match):",
        f"  before training        {100 * acc['before']:5.1f} %",
        f"  after training         {100 * acc['after']:5.1f} %   (bar: >= {100 * ACCURACY_BAR:.0f} %)",
        f"  after, images blanked  {100 * acc['blank']:5.1f} %   (bar: <= chance + {100 * BLANK_MARGIN:.0f} = "
        f"{100 * blank_bar:.1f} %; chance {100 * chance['uniform']:.1f} % uniform, {100 * chance['majority']:.1f} % majority)",
        "  per category (before / after / blank): " + "; ".join(
            f"{c} {100 * v['before']:.0f}/{100 * v['after']:.0f}/{100 * v['blank']:.0f}" for c, v in report["per_category"].items()),
    ]
    if report["official_scorers"]:
        lines.append("  yes/no questions through official scorers: " + ", ".join(
            f"{k.split('_')[1].upper()} {v:.1f}" for k, v in report["official_scorers"].items() if v is not None))
    lines += ["", f"verdict: {'PASS' if passed else 'FAIL'}",
              f"model: {model_link}" + ("  (the default of chat, demo and eval)" if model_link.resolve() == default_model_dir().resolve() else
                                        f"  (use --model {model_link})"),
              "try:   llm2clip-llava chat --image " + str(root / "data" / "images" / "heldout" / "000000.png"),
              "       llm2clip-llava demo", f"report: {root / 'report.json'}", "=" * 78]
    print("\n".join(lines), flush=True)
    return report
