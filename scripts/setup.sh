#!/usr/bin/env bash
# Creates .venv (once) and installs the project into it, editable, with the C runtime built by CMake.
# torch is pinned to a CPU build: an unpinned torch would pull several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip show torch >/dev/null 2>&1 || .venv/bin/python -m pip install -q "torch==2.13.0" || \
  .venv/bin/python -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
echo "[setup] building and installing specquant-gguf (native runtime through CMake)"
.venv/bin/python -m pip install -q -e ".[convert,test,bench,server]"
