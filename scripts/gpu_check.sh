#!/usr/bin/env bash
# The GPU check as one call on a lent H100/H200 (see README "GPU check"). Prepare once on this machine with
# `bash scripts/gpu_check.sh --prepare` (downloads the bitsandbytes wheel for the device's Python 3.12 into
# .whl/ and copies the SentencePiece tokenizer there), then run on the device, carrying .whl:
#   bash scripts/gpu_check.sh            (extra arguments go to scripts/gpu_check.py)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "bitsandbytes==0.50.2"
  cp "$(python3 -c 'import mllm.tiny as t; print(t.spm_tokenizer_model_path())')" .whl/tokenizer.model
  ls -la .whl
  exit 0
fi
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
[ -f .whl/tokenizer.model ] && export LLM2CLIP_LLAVA_SPM_MODEL="$PWD/.whl/tokenizer.model"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec python3 scripts/gpu_check.py "$@"
