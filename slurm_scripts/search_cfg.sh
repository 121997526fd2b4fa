#!/usr/bin/env bash
#SBATCH --job-name=randar_search_cfg
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --mem=256G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=slurm_logs/%x-%j.out
# Account and partition: sbatch -A ACCOUNT -p PARTITION, or SBATCH_ACCOUNT / SBATCH_PARTITION.
#
# Search the CFG scale on 10k samples, then evaluate 50k at the best one (FID, sFID, IS, precision, recall).
# Required: GPT_CKPT, VQ_CKPT, REF_NPZ (VIRTUAL_imagenet256_labeled.npz), SAMPLE_DIR, RESULTS_PATH
# (the JSON; a requeued job skips the scales already in it). Optional: CONFIG (default: the config a
# train_c2i.py export carries), EXP_NAME, INCEPTION_PATH (the classify_image_graph_def.pb), NUM_STEPS
# (default 88), BATCH (default 64), EXTRA_ARGS.
# shellcheck source=slurm_scripts/common.sh
source "${RANDAR_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm_scripts/common.sh"
need GPT_CKPT VQ_CKPT REF_NPZ SAMPLE_DIR RESULTS_PATH
activate
if [ -n "${INCEPTION_PATH:-}" ]; then export RANDAR_INCEPTION_PATH=$INCEPTION_PATH; fi
# shellcheck disable=SC2086
torchrun --standalone --nproc_per_node "$GPUS_PER_NODE" tools/search_cfg_weights.py \
  --exp-name "${EXP_NAME:-search}" ${CONFIG:+--config "$CONFIG"} --gpt-ckpt "$GPT_CKPT" --vq-ckpt "$VQ_CKPT" \
  --cfg-scales-search 2.0,8.0 --cfg-scales-interval 0.2 \
  --num-fid-samples-search 10000 --num-fid-samples-final 50000 \
  --per-proc-batch-size "${BATCH:-64}" --num-inference-steps "${NUM_STEPS:-88}" \
  --ref-path "$REF_NPZ" --sample-dir "$SAMPLE_DIR" --results-path "$RESULTS_PATH" ${EXTRA_ARGS:-}
