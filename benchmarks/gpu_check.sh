#!/usr/bin/env bash
# Everything a GPU session should run, in one command (under 8 minutes on one H100/H200), ending with a table.
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# Needs the project's environment with a CUDA build of torch (scripts/setup_env.sh keeps an installed one).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:-${OUT:-gpu_check_output}}
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

status=0
step() {  # step NAME CMD...: run, log to $out/NAME.log, record pass/fail
  local name=$1
  shift
  echo "=== $name: $*"
  if "$@" 2>&1 | tee "$out/$name.log"; then echo "$name ok" >> "$out/status.txt"
  else echo "$name FAILED" >> "$out/status.txt"; status=1; fi
}
: > "$out/status.txt"
step correctness "$PY" benchmarks/gpu_correctness.py
step generate "$PY" benchmarks/bench_generate.py --device cuda --dtype bf16 --batch-sizes 1 8 \
  --steps 256 88 64 --compile ${ORIGINAL_REPO:+--original-repo "$ORIGINAL_REPO"}
step train "$PY" benchmarks/bench_train.py --device cuda --configs tiny l xl --steps 5 --compile

echo
echo "================ summary ================"
cat "$out/status.txt"
grep -h -E "ratio|speed-up" "$out/generate.log" || true
grep -h -E "steps +(256|88)" "$out/generate.log" | awk '{print $1, $2, $3, $4, $5, $6, $7, $8, $9}' || true
grep -h "tokens/s" "$out/train.log" || true
exit $status
