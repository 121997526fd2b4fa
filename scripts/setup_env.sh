#!/usr/bin/env bash
# Create ./.venv (if missing) and install what the project needs. Safe to re-run: it only installs when
# requirements.txt changed since the last successful install.
#
# torch: if the venv has none yet, it installs $TORCH_SPEC (default torch==2.13.0, the CPU wheel on the
# project's CPU machines). On a GPU machine install your CUDA torch into .venv first (or set TORCH_SPEC),
# and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
