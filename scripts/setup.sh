#!/usr/bin/env bash
# Installs everything the project needs into ./.venv (or $VENV): the package; with --dev its test extra
# (pytest, Playwright, lmms-eval for the adapter's tests); with --browser Debian's Chromium for the browser
# tests. Safe to run again: it only adds what is missing. Everything comes from package registries; nothing
# is downloaded at test or run time.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
want_browser=0
target="."
for arg in "$@"; do
  case "$arg" in
    --browser) want_browser=1 ;;
    --dev) target=".[dev]" ;;
    -h|--help) echo "usage: scripts/setup.sh [--dev] [--browser]   (VENV=.venv PYTHON=python3)"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
stamp="$VENV/.llm2clip-llava-installed$( [ "$target" = "." ] || echo "-dev" )"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing llm2clip-llava from $target (torch, transformers, timm, peft, bitsandbytes, gradio, ...)"
  "$VENV/bin/python" -m pip install -q -e "$target"
  touch "$stamp"
fi

if [ "$want_browser" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian's chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup] /usr/bin/chromium is missing and we are not root: run 'sudo apt-get install chromium'" >&2
    exit 1
  fi
fi
