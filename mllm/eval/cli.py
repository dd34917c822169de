"""``llm2clip-llava eval``: one benchmark, one checkpoint, LLaVA-1.5's protocol (see docs/eval_suites.md)."""
from __future__ import annotations

import argparse
import logging
import sys

from ..errors import UserError
from .cache import CacheMismatchError
from .suites import BENCHMARK_NAMES, BENCHMARKS, parse_options


def _benchmark_help() -> str:
    lines = ["benchmarks (--option KEY=VALUE):"]
    for name, cls in BENCHMARKS.items():
        opts = {k: v for k, v in cls.options().items() if k != "judge"}
        shown = ", ".join(f"{k}={v}" for k, v in opts.items()) or "no options"
        where = ("GPT-judged" if "judge" in cls.options() else
                 "server-scored, local score where annotations exist" if cls.server_side else "scored locally")
        lines.append(f"  {name:<11} {cls.display_name} ({where}; headline {cls.main_metric}); {shown}")
    lines += ["", ("Expected files per benchmark: docs/eval_suites.md. Judged benchmarks (llavabench, mmvet) call "
                   "an OpenAI-compatible endpoint only when OPENAI_API_KEY / OPENAI_BASE_URL are set."),
              "", "examples:",
              "  llm2clip-llava eval --model runs/finetune --benchmark pope --data playground/data/eval/pope",
              "  llm2clip-llava eval --benchmark pope --data playground/data/eval/pope \\",
              "      --answers playground/data/eval/pope/answers/llava-v1.5-13b.jsonl   # re-score, no model"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm2clip-llava eval", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate a checkpoint on a benchmark: batched greedy decoding, a resumable prediction cache, "
                    "official-equivalent scoring; writes predictions.jsonl, metrics.json, metrics.md and "
                    "submission files.",
        epilog=_benchmark_help())
    p.add_argument("--model", default=None, help="checkpoint directory (default: the quickstart model)")
    p.add_argument("--benchmark", required=True, metavar="NAME", help=f"one of: {', '.join(BENCHMARK_NAMES)}")
    p.add_argument("--data", required=True,
                   help="the benchmark's folder: LLaVA's eval.zip layout (playground/data/eval/<bench>, whose "
                        "question file then gives the prompts) or the benchmark's own download; or the question "
                        "file itself")
    p.add_argument("--answers", default=None, metavar="FILE",
                   help="re-score an answers file without a model: LLaVA's answers JSONL (question_id, prompt, "
                        "text, ...) or a predictions.jsonl written by this command")
    p.add_argument("--protocol", default="batched", choices=["batched", "llava"],
                   help="batched (default): batched greedy decoding in bf16, fastest; llava: exactly LLaVA's "
                        "eval scripts (batch 1, fp16 on CUDA), to put numbers next to LLaVA's published ones")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="benchmark option, repeatable (e.g. use_ocr=false, splits=random,popular)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N items")
    p.add_argument("--batch-size", type=int, default=None,
                   help="prompts per generate call (default: 8; 1 under --protocol llava)")
    p.add_argument("--num-workers", type=int, default=2,
                   help="DataLoader workers decoding images (default: 2; 0: in the main process)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="override every item's token budget")
    p.add_argument("--output-dir", default=None,
                   help="where results and the prediction cache go (default: eval_results/<model>/<benchmark>)")
    p.add_argument("--label", default=None, help="run name shown by `compare` (default: the model folder's name)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: cuda when available)")
    p.add_argument("--quantization", default="auto", choices=["auto", "none", "4bit", "8bit"],
                   help="LLM quantisation (auto: as the checkpoint was trained, when bitsandbytes is present)")
    p.add_argument("--dtype", default=None, choices=["auto", "fp32", "bf16", "fp16"],
                   help="compute dtype (default: bf16 on CUDA, fp32 on CPU; fp16 under --protocol llava)")
    p.add_argument("--merge-on-load", action="store_true",
                   help="fold a LoRA/QLoRA adapter into a bf16 copy of its base when loading: faster batched "
                        "decoding on CUDA than a 4-bit base, for ~13.5 GB instead of ~4 GB (7B)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard predictions cached by a different model/options instead of refusing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        options = parse_options(args.benchmark, args.option)
    except ValueError as e:
        print(f"llm2clip-llava eval: error: {e}", file=sys.stderr)
        return 2
    from .runner import EvalConfig, run_eval  # torch: not for --help or a bad flag

    config = EvalConfig(
        benchmark=args.benchmark, data=args.data, model=args.model, options=options, output_dir=args.output_dir,
        limit=args.limit, batch_size=args.batch_size, num_workers=args.num_workers,
        max_new_tokens=args.max_new_tokens, device=args.device, quantization=args.quantization,
        dtype=None if args.dtype == "auto" else args.dtype, merge_on_load=args.merge_on_load, label=args.label,
        overwrite=args.overwrite, progress=not args.no_progress, answers=args.answers, protocol=args.protocol)
    try:
        run_eval(config)
    except (UserError, CacheMismatchError, FileNotFoundError, ValueError) as e:
        if args.verbose:
            raise
        print(f"llm2clip-llava eval: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished batches are cached; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
