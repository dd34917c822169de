"""`pretrain` and `finetune` commands: presets (YAML) + per-field overrides → `train()`.

Examples:
  llm2clip-llava pretrain --data_path blip_laion_cc_sbu_558k.json --image_folder images
  accelerate launch --config_file mllm/accelerate_configs/multi_gpu.yaml -m mllm.train.cli finetune \\
      --pretrained_projector runs/pretrain --data_path llava_v1_5_mix665k.json --image_folder playground/data
"""
from __future__ import annotations

import json
import logging
import os
import sys
import traceback

from ..errors import UserError
from .config import build_parser, resolve_config
from .preflight import preflight

MULTI_COMMAND = True
STAGES = {
    "pretrain": ("pretrain", "Stage 1: train the projector on image-caption pairs (LLaVA-1.5 recipe, template plain)."),
    "finetune": ("finetune", "Stage 2: visual instruction tuning, QLoRA on CUDA by default (LLaVA-1.5 recipe)."),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m mllm.train.cli {{{','.join(STAGES)}}} [options]", file=sys.stderr)
        return 2
    stage, rest = argv[0], argv[1:]
    preset, description = STAGES[stage]
    parser = build_parser(f"llm2clip-llava {stage}", description + " Every field below overrides the preset.",
                          default_preset=preset)
    args = parser.parse_args(rest)
    try:
        config = resolve_config(stage, args, preset)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    checked = preflight(config)  # every user error we can see without a model: before importing torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .trainer import train  # torch and the model stack: after the checks above

    with logging_redirect_tqdm():  # log lines go through the progress bar, never into the middle of it
        try:
            train(config, checked)
        except BaseException as exc:
            # drop the failed run's frames now: its progress bar closes here, above the one-line error
            traceback.clear_frames(exc.__traceback__)
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
