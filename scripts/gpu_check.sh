#!/usr/bin/env bash
# The GPU check (README "GPU check") as one call on a lent GPU machine, which has no internet and no
# bitsandbytes or mistral_common: what it needs travels in .whl/ (ignored by git, named in the call's carry).
#
#   bash scripts/gpu_check.sh --prepare   here, once: the bitsandbytes wheel for the device's Python 3.12 (the
#                                         version this project's .venv tests with) and the SentencePiece
#                                         tokenizer into .whl/; fails unless both are there afterwards
#   bash scripts/gpu_check.sh             on the device: installs the carried wheel, runs every phase, writes
#                                         gpu_check.json + gpu_check.log to $OUT (or $GPU_CHECK_OUT, else
#                                         ./gpu_check_out)
#   bash scripts/gpu_check.sh --tiny      every phase at toy size on the CPU (what the tests run)
# Other arguments go to scripts/gpu_check.py (--phases, --list, --budget-s, ...).
# VENV (default .venv) names the project's virtual environment; WHL_DIR (default .whl) the carried folder.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
VENV="${VENV:-.venv}"
WHL_DIR="${WHL_DIR:-.whl}"
die() { echo "gpu_check.sh: $*" >&2; exit 1; }

if [ "${1:-}" = "--prepare" ]; then
  PY="$VENV/bin/python"
  [ -x "$PY" ] || die "no project Python at $PY: run 'bash scripts/setup.sh' first (or set VENV=/path/to/venv)"
  version="$("$PY" -c 'import importlib.metadata as m; print(m.version("bitsandbytes"))')" \
    || die "bitsandbytes is not installed in $VENV: run 'bash scripts/setup.sh'"
  mkdir -p "$WHL_DIR"
  # one version only: two wheels of a package stop the whole install on the device
  for old in "$WHL_DIR"/bitsandbytes-*.whl; do
    case "$old" in "$WHL_DIR/bitsandbytes-$version-"*) ;; *) rm -f "$old" ;; esac
  done
  if ! ls "$WHL_DIR/bitsandbytes-$version-"*.whl >/dev/null 2>&1 \
     || ! "$PY" -m zipfile -t "$WHL_DIR/bitsandbytes-$version-"*.whl >/dev/null 2>&1; then
    rm -f "$WHL_DIR/bitsandbytes-$version-"*.whl
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHL_DIR" "bitsandbytes==$version" || die "could not download the bitsandbytes $version wheel"
  fi
  wheel="$(ls "$WHL_DIR/bitsandbytes-$version-"*.whl 2>/dev/null | head -n1)"
  [ -n "$wheel" ] && "$PY" -c 'import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist()
sys.exit(not any("libbitsandbytes_cuda13" in n for n in names))' "$wheel" \
    || die "$WHL_DIR holds no bitsandbytes $version wheel with CUDA 13 kernels (the device runs CUDA 13)"
  PYTHONPATH="$REPO" "$PY" - "$WHL_DIR/tokenizer.model" <<'EOF' || die "could not put the tokenizer in $WHL_DIR"
import shutil, sys
import sentencepiece
from mllm.tiny import spm_tokenizer_model_path
source = spm_tokenizer_model_path()
shutil.copyfile(source, sys.argv[1])
vocab = sentencepiece.SentencePieceProcessor(model_file=sys.argv[1]).get_piece_size()
assert vocab == 32000, f"{source}: {vocab} pieces, expected the 32k Llama vocabulary"
print(f"tokenizer: {source} -> {sys.argv[1]} ({vocab} pieces)")
EOF
  total=$(( $(git ls-files -z | xargs -0 cat 2>/dev/null | wc -c) + $(du -sb "$WHL_DIR" | cut -f1) ))
  echo "ready: $wheel ($(du -h "$wheel" | cut -f1)), $WHL_DIR/tokenizer.model; with the tracked tree ~$((total / 1048576)) MiB of the 64 MiB a device call carries"
  [ "$total" -lt $((64 * 1048576)) ] || die "tree + $WHL_DIR exceed the 64 MiB a device call carries"
  echo "device call: run(command=\"bash scripts/gpu_check.sh\", carry=[\"$WHL_DIR\"], timeout_s=560)"
  exit 0
fi

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$VENV/bin/python" ]; then PY="$VENV/bin/python"
else PY=python3  # the device machine: its python3 holds torch, transformers, peft, timm
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if ! "$PY" -c 'import bitsandbytes' >/dev/null 2>&1; then
  ls "$WHL_DIR"/bitsandbytes-*.whl >/dev/null 2>&1 || die "bitsandbytes is missing and $WHL_DIR has no wheel: run --prepare here and carry $WHL_DIR"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site \
    "$WHL_DIR"/bitsandbytes-*.whl
  export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -z "${LLM2CLIP_LLAVA_SPM_MODEL:-}" ] && [ -f "$WHL_DIR/tokenizer.model" ]; then
  export LLM2CLIP_LLAVA_SPM_MODEL="$(cd "$WHL_DIR" && pwd)/tokenizer.model"
fi
OUT_DIR="${GPU_CHECK_OUT:-${OUT:-$REPO/gpu_check_out}}"
mkdir -p "$OUT_DIR"
"$PY" scripts/gpu_check.py --out-dir "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
