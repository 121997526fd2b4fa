#!/usr/bin/env bash
# Create ./.venv (if missing) and install this package in editable mode with its dependencies (requirements.txt,
# read by pyproject.toml) and pytest. Safe to re-run: it only installs when requirements.txt or pyproject.toml
# changed since the last successful install.
#
# torch: if the venv has none yet, it installs $TORCH_SPEC (default torch==2.13.0, the CPU wheel on the
# project's CPU machines). On a GPU machine install your CUDA torch into .venv first (or set TORCH_SPEC),
# and this script keeps it (requirements.txt only asks for torch>=2.4).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
# the build backend, in the venv, so that the editable install needs no isolated build environment: Python 3.12+
# venvs have none, older ones one too old to read requirements.txt (62.6) or to build wheels by itself (70.1)
.venv/bin/python -m pip install -q "setuptools>=70.1"
.venv/bin/python -m pip install -q --no-build-isolation -e ".[test]"
echo "$want" > "$stamp"
