#!/usr/bin/env bash
# Create .venv (if missing) and install fastvc with its dev extra into it. Idempotent and quiet.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.fastvc-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch 2.13.0 first: on a CPU-only machine this is the CPU wheel; an unpinned torch would pull a CUDA build.
  .venv/bin/python -m pip install -q "torch==${FASTVC_TORCH_VERSION:-2.13.0}" 2>/dev/null \
    || .venv/bin/python -m pip install -q torch
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
