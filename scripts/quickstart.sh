#!/usr/bin/env bash
# The README's first command: install the project into ./.venv (see scripts/setup.sh), then run the CPU
# quickstart. Arguments go to `llm2clip-llava quickstart` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
echo "[quickstart] install step took $(( $(date +%s) - start )) s"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "${VENV:-.venv}/bin/llm2clip-llava" quickstart "$@"
