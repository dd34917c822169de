"""Forward throughput of the EVA02 tower at full LLM2CLIP-EVA02-L-14-336 size vs timm's `Eva`, same run.

Peer: `timm.create_model("eva02_large_patch14_clip_336", num_classes=0)` carrying the same random weights,
timed with `forward_features` (24 blocks + final norm). Ours is timed twice: the default LLaVA path
(select_layer=-2, so 23 blocks run) and select_layer=-1 (24 blocks, the like-for-like comparison).
Repeats are interleaved, in an order rotated every round, so machine-load drift hits all three. Wall time and
process CPU time (all threads; less sensitive to other processes on a shared machine) are both recorded;
medians and timm/ours time ratios (>1 = ours faster) go to benchmarks/results/vision_tower.json.

    python benchmarks/vision_tower.py [--batch-sizes 1 8] [--repeats 5 5] [--threads N] [--dtype fp32]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vision_tower import DEFAULT_PRESET, build_vision_tower  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _time(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def _write(args, device, sanity, results, load_start) -> None:
    import timm

    report = {
        "benchmark": "vision_tower forward throughput, LLM2CLIP-EVA02-L-14-336 size, random weights",
        "peer": f"timm {timm.__version__} eva02_large_patch14_clip_336 forward_features",
        "dtype": args.dtype, "device": str(device),
        "device_name": _cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "python": platform.python_version(), "load_average_start_end": [load_start, os.getloadavg()],
        "sanity_max_abs_diff_vs_timm": sanity, "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, nargs="+", default=[5, 5], help="timed rounds per batch size")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "vision_tower.json")
    args = ap.parse_args(argv)
    if len(args.repeats) == 1:
        args.repeats = args.repeats * len(args.batch_sizes)
    if args.threads:
        torch.set_num_threads(args.threads)
    import timm

    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    ours = build_vision_tower(DEFAULT_PRESET, dtype=dtype, device=device)
    peer = timm.create_model("eva02_large_patch14_clip_336", pretrained=False, num_classes=0)
    missing, unexpected = peer.load_state_dict(ours.trunk.state_dict(), strict=False)
    peer = peer.to(device=device, dtype=dtype).eval().requires_grad_(False)
    print(f"built both towers in {time.perf_counter() - t0:.1f}s (timm load: {len(missing)} missing, "
          f"{len(unexpected)} unexpected keys)", flush=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    results = {}
    load_start = os.getloadavg()
    with torch.inference_mode():
        x = torch.randn(1, 3, 336, 336, device=device, dtype=dtype)
        want = peer.forward_intermediates(x, indices=[22], output_fmt="NLC", intermediates_only=True)[0]
        sanity = (ours(x) - want).abs().max().item()
        print(f"sanity: select_layer=-2 features vs timm forward_intermediates(22): max|diff| {sanity:.2e}")
        for bs, reps in zip(args.batch_sizes, args.repeats):
            x = torch.randn(bs, 3, 336, 336, device=device, dtype=dtype)
            runs = {
                "timm_eva_forward_features": lambda: (peer.forward_features(x), sync()),
                "ours_select_layer_-2": lambda: (ours(x), sync()),
                "ours_select_layer_-1": lambda: (setattr(ours, "select_layer", -1), ours(x), sync(),
                                                 setattr(ours, "select_layer", -2)),
            }
            for fn in runs.values():  # warm-up
                fn()
            wall = {k: [] for k in runs}
            cpu = {k: [] for k in runs}
            names = list(runs)
            for r in range(reps):
                for name in names[r % 3:] + names[:r % 3]:  # rotate the order so no variant always goes first
                    w, c = _time(runs[name])
                    wall[name].append(w)
                    cpu[name].append(c)
                print(f"batch {bs} round {r + 1}/{reps}: " +
                      ", ".join(f"{k} {wall[k][-1]:.2f}s wall / {cpu[k][-1]:.2f}s cpu" for k in runs), flush=True)
            entry = {"repeats": reps}
            for label, samples in (("wall", wall), ("cpu", cpu)):
                med = {k: statistics.median(v) for k, v in samples.items()}
                t_peer = med["timm_eva_forward_features"]
                entry[label] = {
                    "median_s": med,
                    "images_per_s": {k: bs / v for k, v in med.items()},
                    "samples_s": samples,
                    # timm time / our time: >= 1 means ours is at least as fast
                    "speed_ratio_vs_timm": {
                        "select_layer_-2 (default, 23 blocks)": t_peer / med["ours_select_layer_-2"],
                        "select_layer_-1 (24 blocks, like-for-like)": t_peer / med["ours_select_layer_-1"],
                    },
                }
            results[f"batch_{bs}"] = entry
            _write(args, device, sanity, results, load_start)
            print(json.dumps({f"batch_{bs}": {lb: entry[lb]["speed_ratio_vs_timm"] for lb in ("wall", "cpu")}},
                             indent=2), flush=True)

    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
