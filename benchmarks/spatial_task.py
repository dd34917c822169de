"""What merging 2×2 patches costs where fine spatial detail matters: the spatial task with both projectors.

The task (`mllm/quickstart/spatial.py`): 2-5 small squares on a 4×4 board of 64 px, one cell per 16-px tower
patch; questions ask the colour of the object in a given row and column, and how many objects there are. With
`pixel_shuffle2_mlp2x_gelu` four neighbouring cells share one LLM token (4 image tokens instead of 16), the
worst case for the merge. Both projectors are trained by the quickstart pipeline on the same data, the same
warmed-up tower and LLM (stage 0 runs once and is copied), with the same steps, batch sizes and learning rates
(profile `spatial`), and evaluated on the same 400 held-out questions, before training, after, and with blank
images. Writes benchmarks/results/spatial_task.json and prints the table the README shows.
Run: python benchmarks/spatial_task.py [--seeds 0 1] [--output-dir DIR] [--fresh]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# benchmarks/vision_tower.py would shadow the `vision_tower` package when this file runs as a script
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = Path(__file__).resolve().parent / "results"
PROJECTORS = ("mlp2x_gelu", "pixel_shuffle2_mlp2x_gelu")


def run(root: Path, seeds: list[int], projectors: tuple[str, ...], fresh: bool) -> dict:
    import shutil

    from mllm.quickstart.profiles import PROFILES
    from mllm.quickstart.run import copy_stages, run_quickstart

    runs: dict[str, dict[str, dict]] = {p: {} for p in projectors}
    for seed in seeds:
        first = None
        for projector in projectors:
            out = root / f"seed{seed}" / projector
            if fresh and out.exists():
                shutil.rmtree(out)
            if first is not None:  # same data and stage-0 backbones: only stages 1, 2 and eval differ
                copy_stages(first, out)
            print(f"== seed {seed}, {projector}: {out}", flush=True)
            report = run_quickstart(out, PROFILES["spatial"].replace(projector_type=projector), seed, publish=False)
            first = first or out
            runs[projector][str(seed)] = {
                "accuracy": report["accuracy"], "per_category": report["per_category"],
                "image_tokens": report["image_tokens"], "chance": report["chance"],
                "stage_seconds": report["stage_seconds"], "reused_stages": report["reused_stages"],
                "report": str(out / "report.json"),
            }
    return runs


def summarise(runs: dict[str, dict[str, dict]]) -> dict:
    out = {}
    for projector, by_seed in runs.items():
        reports = list(by_seed.values())
        categories = sorted(reports[0]["per_category"])
        out[projector] = {
            "image_tokens": reports[0]["image_tokens"], "seeds": sorted(by_seed, key=int),
            "after": statistics.mean(r["accuracy"]["after"] for r in reports),
            "blank": statistics.mean(r["accuracy"]["blank"] for r in reports),
            "before": statistics.mean(r["accuracy"]["before"] for r in reports),
            "after_per_category": {c: statistics.mean(r["per_category"][c]["after"] for r in reports)
                                   for c in categories},
            "stage2_seconds": statistics.mean(r["stage_seconds"]["stage2"] for r in reports),
        }
    if set(PROJECTORS) <= set(out):
        a, b = out[PROJECTORS[0]], out[PROJECTORS[1]]
        out["pixel_shuffle_minus_mlp_points"] = {
            "after": 100 * (b["after"] - a["after"]),
            **{c: 100 * (b["after_per_category"][c] - a["after_per_category"][c]) for c in a["after_per_category"]},
        }
    return out


def table(summary: dict, chance: dict) -> str:
    rows = ["| projector | image tokens | held-out accuracy | " + " | ".join(
        summary[PROJECTORS[0]]["after_per_category"]) + " | blank images | before training |",
        "|---|---|---|" + "---|" * len(summary[PROJECTORS[0]]["after_per_category"]) + "---|---|"]
    for projector in PROJECTORS:
        if projector not in summary:
            continue
        s = summary[projector]
        rows.append(f"| `{projector}` | {s['image_tokens']} | {100 * s['after']:.1f} % | " + " | ".join(
            f"{100 * v:.1f} %" for v in s["after_per_category"].values()) +
            f" | {100 * s['blank']:.1f} % | {100 * s['before']:.1f} % |")
    rows.append(f"\nchance: {100 * chance['uniform']:.1f} % (uniform), {100 * chance['majority']:.1f} % (majority)")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per projector per seed")
    parser.add_argument("--projectors", nargs="+", default=list(PROJECTORS), help="projector types to train")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where the runs go (default: <LLM2CLIP_LLAVA_HOME>/spatial_task); finished stages "
                             "are reused on a re-run")
    parser.add_argument("--fresh", action="store_true", help="redo every stage")
    parser.add_argument("--out", type=Path, default=RESULTS / "spatial_task.json")
    args = parser.parse_args(argv)

    import logging

    from mllm.paths import home

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "urllib3", "PIL", "transformers", "vision_tower"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    root = args.output_dir or home() / "spatial_task"
    started, load_start = time.time(), os.getloadavg()
    runs = run(root, args.seeds, tuple(args.projectors), args.fresh)
    summary = summarise(runs)
    chance = next(iter(next(iter(runs.values())).values()))["chance"]
    from mllm.quickstart.profiles import PROFILES

    result = {
        "benchmark": "spatial_task", "profile": "spatial",
        "profile_values": {k: v for k, v in vars(PROFILES["spatial"]).items() if k != "projector_type"},
        "chance": chance, "summary": summary, "runs": runs, "wall_s": round(time.time() - started, 1),
        "loadavg": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "command": "python benchmarks/spatial_task.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(summary, chance))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
