"""GPU check: the real model shapes on one lent H100/H200 in one call that cannot waste the lease.

Phases (`--list`; details in README "GPU check"): a pre-flight in the first ~20 s (versions, a 4-bit
quantise/dequantise/matmul round trip on the GPU, a bf16 matmul, the tokenizer, one full-size tower build),
a random 7B Llama saved to disk, stage-2 QLoRA steps unpadded and right-padded (tokens/s, MFU, peak
allocated/reserved memory), the tower alone, stage-1 steps, and greedy generation at batch 1/4/8 on the 4-bit
base and merged in bf16 (tokens/s, agreement with batch 1). Results: `gpu_check.json` in --out-dir (default
$OUT), rewritten after every phase; a phase that raises is recorded and the next one runs.

`--tiny` runs every phase at toy size on the CPU (what CI runs). Run it through scripts/gpu_check.sh, which
installs the carried bitsandbytes wheel, points the tokenizer at the carried copy and tees the log.
"""
from __future__ import annotations

import os

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):  # before huggingface_hub loads
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import torch  # noqa: E402
from gpu_check_lib.flops import FORMULA, peak_tflops  # noqa: E402
from gpu_check_lib.harness import Results, Runner  # noqa: E402
from gpu_check_lib.phases import PHASES  # noqa: E402
from gpu_check_lib.report import render_table  # noqa: E402
from gpu_check_lib.workload import Workload  # noqa: E402

TINY_SIZES = dict(micro_batch=2, text_tokens=16, steps=2, warmup=1, new_tokens=3, generation_batches=(1, 4),
                  tower_batch=4, tower_repeats=2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="every phase at toy size on the CPU (code-path check)")
    p.add_argument("--phases", default=None, help="comma-separated subset to run (default: all; see --list)")
    p.add_argument("--list", action="store_true", help="print the phases with their H100 time estimates and exit")
    p.add_argument("--out-dir", default=None, help="where gpu_check.json goes (default: $OUT, else ./gpu_check_out)")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="skip phases that would end after this many seconds; a hang past it ends the run "
                        "(default 480: inside a 540-600 s device call)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak for MFU when the GPU's exact name is not in the datasheet table")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--text-tokens", type=int, default=224, help="text tokens per training sample (+576 image tokens)")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per batch kind")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per prompt")
    p.add_argument("--table", metavar="JSON", default=None, help="print the README table of a results file and exit")
    return p


def _select(spec: str | None):
    if not spec:
        return list(PHASES)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    known = {phase.name: phase for phase in PHASES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"gpu_check: unknown phase(s) {unknown}; known: {list(known)}")
    return [phase for phase in PHASES if phase.name in names]


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table:
        print(render_table(json.loads(Path(args.table).read_text())))
        return 0
    phases = _select(args.phases)
    if args.list:
        for phase in phases:
            print(f"{phase.name:<18} ~{phase.estimate_s:>3.0f} s  {phase.description}")
        print(f"{'total':<18} ~{sum(p.estimate_s for p in phases):>3.0f} s on one H100 (estimate)")
        return 0
    if not args.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; --tiny runs every phase at toy size on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.tiny else torch.device("cuda", torch.cuda.current_device())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    sizes = TINY_SIZES if args.tiny else dict(micro_batch=args.micro_batch, text_tokens=args.text_tokens,
                                              steps=args.steps, warmup=args.warmup, new_tokens=args.new_tokens)
    peak = args.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)
    out_dir = Path(args.out_dir or os.environ.get("OUT") or REPO / "gpu_check_out")
    out = out_dir / f"gpu_check{'_tiny' if args.tiny else ''}.json"
    results = Results(out, {
        "schema": 1, "device": name, "tiny": args.tiny, "budget_s": args.budget_s, "commit": _commit(),
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sizes": sizes, "peak_bf16_tflops": peak, "mfu_formula": FORMULA,
        "plan": [{"phase": p.name, "estimate_s": p.estimate_s, "what": p.description} for p in phases],
    })
    print(f"[gpu_check] {name}: {len(phases)} phases, budget {args.budget_s:.0f} s, results -> {out}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        workload = Workload(device=device, workdir=Path(tmp), tiny=args.tiny, peak_tflops=peak, **sizes)
        ok = Runner(results, device, args.budget_s).run(phases, workload)
        results.set(artifacts=workload.artifacts)
    print("\n" + render_table(results.data) + f"\n\n[gpu_check] results: {out}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
