#!/usr/bin/env bash
#SBATCH --job-name=randar_sample
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --mem=256G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=slurm_logs/%x-%j.out
# Account and partition: sbatch -A ACCOUNT -p PARTITION, or SBATCH_ACCOUNT / SBATCH_PARTITION.
#
# Sample 50k images (PNGs + one .npz). Required: GPT_CKPT, VQ_CKPT, SAMPLE_DIR.
# Optional: CONFIG (default: the config a train_c2i.py export carries), EXP_NAME, CFG_SCALES (default 1.0,4.0),
# NUM_STEPS (default 88), NUM_SAMPLES (default 50000), BATCH (per-process batch, default 64), EXTRA_ARGS. A requeued job only makes the missing PNGs.
# shellcheck source=slurm_scripts/common.sh
source "${RANDAR_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm_scripts/common.sh"
need GPT_CKPT VQ_CKPT SAMPLE_DIR
activate
# shellcheck disable=SC2086
torchrun --standalone --nproc_per_node "$GPUS_PER_NODE" sample_c2i.py \
  --exp-name "${EXP_NAME:-sample}" ${CONFIG:+--config "$CONFIG"} --gpt-ckpt "$GPT_CKPT" --vq-ckpt "$VQ_CKPT" \
  --cfg-scales "${CFG_SCALES:-1.0,4.0}" --num-inference-steps "${NUM_STEPS:-88}" \
  --num-fid-samples "${NUM_SAMPLES:-50000}" --per-proc-batch-size "${BATCH:-64}" \
  --sample-dir "$SAMPLE_DIR" ${EXTRA_ARGS:-}
