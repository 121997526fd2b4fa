#!/usr/bin/env bash
# The GPU check: one run of under 6 minutes on one H100/H200, on a fresh machine with only this repository.
#   bash benchmarks/gpu_check.sh [--dry-run] [OUT_DIR]                  (OUT_DIR default: gpu_check_output)
# Correctness first (the tiny reference fixtures on the GPU: generations, logits, a training step against CPU),
# then speed (RandAR-L and XL generation eager vs compiled, L training). Every step runs under its own `timeout`,
# all of them within GPU_CHECK_BUDGET seconds (default 330); OUT_DIR/summary.md, a markdown table, is rewritten
# before and after each step, so a run killed midway still leaves one. Exit status 1 if a step failed.
# ORIGINAL_REPO=DIR (a clone of github.com/ziqipang/RandAR) also times the original release;
# RANDAR_INCEPTION_PATH=FILE also runs benchmarks/bench_fid_backends.py; RANDAR_WHEELS=DIR installs missing
# packages from a folder of wheels instead of the package index.
# --dry-run: the same steps on CPU with the tiny config, tiny shapes and the aot_eager compile backend, without
# installing anything (tests/test_gpu_check.py runs it, so the script cannot rot).
# shellcheck disable=SC2086,SC2046  # the lists $batches, $steps, $env_flags split into arguments on purpose
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

dry=0
out=""
for a in "$@"; do
  case $a in
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $a (usage: bash benchmarks/gpu_check.sh [--dry-run] [OUT_DIR])" >&2; exit 2 ;;
    *) out=$a ;;
  esac
done
out=${out:-gpu_check_output}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
# Shared by the background pre-compilation and the timed steps: they then load compiled graphs from disk.
export TORCHINDUCTOR_CACHE_DIR=$out/inductor_cache

L=configs/randar/randar_l_0.3b_llamagen.yaml
XL=configs/randar/randar_xl_0.7b_llamagen.yaml
if (( dry )); then
  mode="dry run (CPU, tiny shapes, aot_eager)"; device=cpu; backend=aot_eager; budget=${GPU_CHECK_BUDGET:-900}
  slow=3  # CPU: timeouts x3
  gen_l=configs/randar/randar_tiny.yaml; gen_xl=configs/randar/randar_tiny.yaml; train_cfg=tiny
  batches="1 2"; steps="16 6"; warm_steps=6; train_batch=8; fid_images=200; env_flags=--dry-run
else
  mode="GPU"; device=cuda; backend=inductor; budget=${GPU_CHECK_BUDGET:-330}; slow=1
  gen_l=$L; gen_xl=$XL; train_cfg=l
  batches="1 8"; steps="256 88"; warm_steps=88; train_batch=32; fid_images=2000; env_flags=""
fi
original=()
[[ -n ${ORIGINAL_REPO:-} ]] && original=(--original-repo "$ORIGINAL_REPO")

names=(env fixtures_generate fixtures_forward fixtures_train precompile speed_l speed_xl train_speed fid_backends)
declare -A what status secs
what[env]="machine, versions; pip-installs missing requirements (not torch)"
what[fixtures_generate]="10 greedy fixture generations, fp32 eager and compiled (CUDA graphs); bf16 autocast"
what[fixtures_generate]+=" static and compiled vs eager"
what[fixtures_forward]="forward logits fp32 eager and compiled vs fixture; bf16 compiled vs eager"
what[fixtures_train]="one training step: loss and gradients vs CPU, eager and compiled; fused AdamW"
what[precompile]="background: compiles the speed steps' graphs into the inductor cache while correctness runs"
shapes="batch ${batches// /,}, ${steps// /,} steps: eager vs compiled${original:+ vs original}"
what[speed_l]="RandAR-L generation, $shapes"
what[speed_xl]="RandAR-XL generation, $shapes"
what[train_speed]="training tokens/s of ${train_cfg}: bf16 autocast, fused AdamW, eager vs compiled"
what[fid_backends]="bench_fid_backends.py (when RANDAR_INCEPTION_PATH is set)"
for n in "${names[@]}"; do status[$n]="not run"; secs[$n]="-"; done
t0=$SECONDS
failed=0

write_summary() {
  {
    echo "# GPU check: $mode"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(head -1 "$out/device.txt" 2>/dev/null), elapsed $((SECONDS - t0)) s" \
         "of a $budget s budget"
    echo
    echo "| step | status | seconds | what |"
    echo "|---|---|---|---|"
    for n in "${names[@]}"; do echo "| $n | ${status[$n]} | ${secs[$n]} | ${what[$n]} |"; done
    for n in "${names[@]}"; do
      if [[ -s $out/$n.md ]]; then echo; echo "## $n"; cat "$out/$n.md"; fi
    done
  } > "$out/summary.md.tmp" && mv "$out/summary.md.tmp" "$out/summary.md"
}

run_step() {  # run_step NAME TIMEOUT_S CMD...: log to OUT/NAME.log, its tables to OUT/NAME.md
  local name=$1 limit=$(( $2 * slow )) left start rc
  shift 2
  left=$(( budget - (SECONDS - t0) ))
  if (( left < 10 )); then status[$name]="**skipped: budget spent**"; failed=1; write_summary; return; fi
  (( limit > left )) && limit=$left
  status[$name]="running (timeout $limit s)"; write_summary
  echo "=== $name (timeout $limit s): $*"
  start=$SECONDS
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
  rc=${PIPESTATUS[0]}
  secs[$name]=$(( SECONDS - start ))
  case $rc in
    0) status[$name]="ok" ;;
    124|137) status[$name]="**TIMEOUT** after $limit s"; failed=1 ;;
    *) status[$name]="**FAILED** (exit $rc, see $name.log)"; failed=1 ;;
  esac
  write_summary
}

correctness_table() { printf '\n| check | result | value | detail |\n|---|---|---|---|\n' > "$out/$1.md"; }

: > "$out/device.txt"
if command -v nvidia-smi > /dev/null && (( ! dry )); then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/device.txt" 2>&1
else
  echo "CPU ($(nproc) cores)" > "$out/device.txt"
fi
rm -f "$out"/*.md
write_summary

run_step env 60 "$PY" benchmarks/check_env.py $env_flags

# Compile the speed steps' graphs in the background (CPU work) while the correctness steps use the GPU; the
# timed steps wait for it, so nothing else runs on the device while they time.
status[precompile]="running (background)"
pre_start=$SECONDS
pre_limit=$(( budget - (SECONDS - t0) ))
(( pre_limit > 300 * slow )) && pre_limit=$(( 300 * slow ))
(( pre_limit < 1 )) && pre_limit=1
(
  timeout -k 10 "$pre_limit" "$PY" benchmarks/bench_generate.py --device "$device" \
    --configs $(printf '%s\n' "$gen_l" "$gen_xl" | sort -u) --batch-sizes $batches --steps $warm_steps \
    --compile --compile-backend "$backend" --warmup-only &&
  timeout -k 10 $(( pre_limit - (SECONDS - pre_start) > 1 ? pre_limit - (SECONDS - pre_start) : 1 )) \
    "$PY" benchmarks/bench_train.py --device "$device" --configs "$train_cfg" \
    --precisions bf16 --grad-ckpt off --batch "$train_batch" --steps 1 --warmup 1 --compile \
    --compile-backend "$backend"
) > "$out/precompile.log" 2>&1 &
pre_pid=$!

correctness_table fixtures_generate
run_step fixtures_generate 90 "$PY" benchmarks/gpu_correctness.py --check generate --device "$device" \
  --compile-backend "$backend" --md "$out/fixtures_generate.md"
correctness_table fixtures_forward
run_step fixtures_forward 75 "$PY" benchmarks/gpu_correctness.py --check forward --device "$device" \
  --compile-backend "$backend" --md "$out/fixtures_forward.md"
correctness_table fixtures_train
run_step fixtures_train 75 "$PY" benchmarks/gpu_correctness.py --check train --device "$device" \
  --compile-backend "$backend" --md "$out/fixtures_train.md"

wait "$pre_pid"
pre_rc=$?
secs[precompile]=$(( SECONDS - pre_start ))
# Only a cache warmer: a failure here shows again, with its message, in the speed steps.
(( pre_rc == 0 )) && status[precompile]="ok" || status[precompile]="exit $pre_rc (see precompile.log)"
write_summary

run_step speed_l 100 "$PY" benchmarks/bench_generate.py --configs "$gen_l" --device "$device" --batch-sizes $batches \
  --steps $steps --repeats 1 --compile --compile-backend "$backend" "${original[@]}" --md "$out/speed_l.md"
run_step speed_xl 120 "$PY" benchmarks/bench_generate.py --configs "$gen_xl" --device "$device" \
  --batch-sizes $batches --steps $steps --repeats 1 --compile --compile-backend "$backend" "${original[@]}" \
  --md "$out/speed_xl.md"
run_step train_speed 90 "$PY" benchmarks/bench_train.py --device "$device" --configs "$train_cfg" --precisions bf16 \
  --grad-ckpt off --batch "$train_batch" --steps 3 --warmup 2 --compile --compile-backend "$backend" \
  --md "$out/train_speed.md"

if [[ -z ${RANDAR_INCEPTION_PATH:-} ]]; then
  status[fid_backends]="skipped: RANDAR_INCEPTION_PATH not set"
elif [[ ! -f benchmarks/bench_fid_backends.py ]]; then
  status[fid_backends]="skipped: benchmarks/bench_fid_backends.py not in this checkout"
else
  run_step fid_backends 60 "$PY" benchmarks/bench_fid_backends.py --inception-path "$RANDAR_INCEPTION_PATH" \
    --num-images "$fid_images" --device "$device"
fi
write_summary

echo
cat "$out/summary.md"
exit $failed
