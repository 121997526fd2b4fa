#!/usr/bin/env bash
#SBATCH --job-name=randar_0.7b_llamagen_360k
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --mem=256G
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
#SBATCH --output=slurm_logs/%x-%j.out
# Account and partition: pass them to sbatch (sbatch -A ACCOUNT -p PARTITION ...), or set SBATCH_ACCOUNT and
# SBATCH_PARTITION in the environment.
#
# Train randar_xl_0.7b_llamagen on ImageNet llamagen codes, on one node. Required variables:
#   CODES_TAR     the token archive (imagenet-llamagen-adm-256_codes.tar), staged to node-local disk
#   VQ_CKPT       the tokenizer checkpoint (for the periodic visualisations)
#   RESULTS_DIR   where the experiment folder lives (node-local scratch is fine: checkpoints are mirrored)
#   DISK_LOCATION permanent storage the checkpoints are mirrored to and resumed from
# Optional: EXP_NAME (default randar_0.7b_llamagen_360k), EXTRA_ARGS (more train_c2i.py flags or key=value config overrides).
# A requeued or resubmitted job resumes from the newest checkpoint under DISK_LOCATION.
CONFIG=configs/randar/randar_xl_0.7b_llamagen.yaml
EXP_NAME=${EXP_NAME:-randar_0.7b_llamagen_360k}
# shellcheck source=slurm_scripts/train_common.sh
source "${RANDAR_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm_scripts/train_common.sh"
