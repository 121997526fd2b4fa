#!/usr/bin/env bash
#SBATCH --job-name=randar_multinode
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --mem=256G
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
#SBATCH --output=slurm_logs/%x-%j.out
# Account and partition: sbatch -A ACCOUNT -p PARTITION, or SBATCH_ACCOUNT / SBATCH_PARTITION.
#
# Multi-node training: one `accelerate launch` per node through srun, rendezvous on the first node.
# Required: CONFIG (e.g. configs/randar/randar_xl_0.7b_llamagen.yaml), EXP_NAME, CODES_TAR, VQ_CKPT,
# RESULTS_DIR (shared by the nodes), DISK_LOCATION. Optional: ACCELERATE_CONFIG (default the DDP one;
# configs/accelerate/fsdp.yaml for RandAR-XXL), MASTER_PORT (default 29500), EXTRA_ARGS.
# shellcheck source=slurm_scripts/common.sh
source "${RANDAR_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm_scripts/common.sh"
need CONFIG EXP_NAME CODES_TAR VQ_CKPT RESULTS_DIR DISK_LOCATION SLURM_JOB_NUM_NODES SLURM_JOB_NODELIST
activate
nodes=$(scontrol show hostnames "$SLURM_JOB_NODELIST")  # no `| head`: under pipefail its early close fails the job
main_node=${nodes%%$'\n'*}
num_procs=$((SLURM_JOB_NUM_NODES * GPUS_PER_NODE))
# Each node stages the data to its own local disk, then launches its share of the processes.
# shellcheck disable=SC2016  # expanded by the shell srun starts on each node
run_requeueable "train_c2i.py --exp-name $EXP_NAME" srun --kill-on-bad-exit=1 bash -c '
  set -euo pipefail
  source "$RANDAR_ROOT/slurm_scripts/common.sh"
  activate
  codes=$(stage_unpacked "$CODES_TAR")
  vq=$(stage "$VQ_CKPT")
  accelerate launch --config_file "${ACCELERATE_CONFIG:-configs/accelerate/ddp.yaml}" \
    --num_machines "$SLURM_JOB_NUM_NODES" --machine_rank "$SLURM_NODEID" \
    --main_process_ip "'"$main_node"'" --main_process_port "${MASTER_PORT:-29500}" \
    --num_processes "'"$num_procs"'" --mixed_precision=bf16 train_c2i.py \
    --exp-name "$EXP_NAME" --config "$CONFIG" --data-path "$codes" --vq-ckpt "$vq" \
    --results-dir "$RESULTS_DIR" --disk-location "$DISK_LOCATION" ${EXTRA_ARGS:-}'
