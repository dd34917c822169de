"""``llm2clip-llava reproduce``: the paper's experiment in one command.

  llm2clip-llava reproduce --dry-run                       # the plan: steps, expected GPU hours, disk
  llm2clip-llava reproduce                                 # run it (again: skips finished steps, resumes the rest)
  llm2clip-llava reproduce --stage2 finetune_lora --num-processes 8    # LLaVA's exact LoRA stage 2 on 8 GPUs
  llm2clip-llava reproduce --config my_recipe.yaml         # other towers / LLM / benchmarks
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..data.layout_check import check_llava_root
from ..errors import UserError
from .config import apply_overrides, load_recipe
from .plan import build_plan
from .report import format_final, format_plan, write_report
from .runner import RecipeRunner, step_state


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm2clip-llava reproduce", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the paper's comparison: every tower of the recipe through stage 1 (projector), stage 2 "
                    "(QLoRA by default), each benchmark and `compare`, then write REPORT.md. Each step is one of "
                    "the single commands; a finished step is skipped, an interrupted one resumes (training from "
                    "its last checkpoint, evaluation from its prediction cache).",
        epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", default=None,
                   help="recipe YAML (default: the paper's, mllm/recipe/paper.yaml)")
    p.add_argument("--data-root", default=None, help="LLaVA data root (default: the recipe's, playground/data)")
    p.add_argument("--output-dir", default=None, help="where everything goes (default: the recipe's)")
    p.add_argument("--stage2", default=None, metavar="PRESET",
                   help="stage-2 preset: finetune (QLoRA, the default), finetune_lora or finetune_full "
                        "(LLaVA-1.5's exact LoRA / full fine-tuning), or a preset YAML")
    p.add_argument("--num-processes", type=int, default=None,
                   help="processes (GPUs) per training step; > 1 runs them under `accelerate launch`")
    p.add_argument("--towers", default=None, help="comma-separated tower keys to run (default: all)")
    p.add_argument("--benchmarks", default=None, help="comma-separated benchmarks (default: the recipe's)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--skip-data-check", action="store_true",
                   help="start without checking the data root (`data check --layout llava`) first")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks for errors")
    return p


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    config = apply_overrides(load_recipe(args.config), data_root=args.data_root, output_dir=args.output_dir,
                             stage2_preset=args.stage2, towers=_csv(args.towers),
                             benchmarks=_csv(args.benchmarks), num_processes=args.num_processes)
    try:
        steps = build_plan(config)
    except FileNotFoundError as e:  # an unknown preset
        raise UserError(str(e)) from e
    print(format_plan(config, steps), flush=True)
    if args.dry_run:
        return 0
    runner = RecipeRunner(config.output_dir, steps)
    runner.check_unchanged()
    if not args.skip_data_check and any(s.command != "compare" and not _done(runner, s) for s in steps):
        _check_data(config)
    results = runner.run()
    report = write_report(config, steps, results)
    print("\n" + format_final(report, results), flush=True)
    return 0


def _done(runner, step) -> bool:
    return step_state(runner.output_dir, step) == "done"


def _check_data(config) -> None:
    """The data check for what this recipe reads; errors stop the run before any model loads."""
    print(f"\nchecking the data root {config.data_root} (`llm2clip-llava data check --layout llava`) ...", flush=True)
    report = check_llava_root(config.data_root, benchmarks=[b.name for b in config.benchmarks], progress=False)
    for finding in report.findings:
        print(finding.line(), flush=True)
    if report.errors:
        raise UserError(f"the data root {config.data_root} has {len(report.errors)} problem(s) listed above "
                        f"(`llm2clip-llava data check --layout llava {config.data_root}` shows where to get the "
                        "pieces); fix them or pass --skip-data-check")
    print(f"data root ok ({len(report.warnings)} warning(s))\n", flush=True)


if __name__ == "__main__":
    sys.exit(main())
