#!/usr/bin/env bash
# The README's test command: installs what the tests need (see scripts/setup.sh), then runs the whole suite
# on the CPU. Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/vision_tower -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev --browser
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
exec "${VENV:-.venv}/bin/python" -m pytest "$@"
