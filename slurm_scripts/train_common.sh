#!/usr/bin/env bash
# Single-node training body shared by the train_*.sh scripts (they set CONFIG and EXP_NAME, then source this).
# shellcheck source=slurm_scripts/common.sh
source "${RANDAR_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm_scripts/common.sh"
need CONFIG EXP_NAME CODES_TAR VQ_CKPT RESULTS_DIR DISK_LOCATION
activate
codes=$(stage_unpacked "$CODES_TAR")
vq=$(stage "$VQ_CKPT")
# shellcheck disable=SC2086  # EXTRA_ARGS is a list of flags
run_requeueable "train_c2i.py --exp-name $EXP_NAME" \
  accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes "$GPUS_PER_NODE" \
  --mixed_precision=bf16 train_c2i.py \
  --exp-name "$EXP_NAME" --config "$CONFIG" --data-path "$codes" --vq-ckpt "$vq" \
  --results-dir "$RESULTS_DIR" --disk-location "$DISK_LOCATION" ${EXTRA_ARGS:-}
