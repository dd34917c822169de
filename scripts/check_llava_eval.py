"""Check llm2clip-llava against your copy of LLaVA-1.5's eval files (see docs/eval_suites.md, "Reproducing LLaVA").

    python scripts/check_llava_eval.py playground/data/eval [--benchmark pope ...]

Re-scores LLaVA-v1.5-13B's published answers (POPE, ScienceQA-IMG, MME) and compares with what LLaVA's own
scripts print, and checks that prompts built from each benchmark's original files are byte-identical to LLaVA's
question files. Exit status 1 when a check fails. The logic lives in mllm/eval/llava_check.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mllm.eval.llava_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
