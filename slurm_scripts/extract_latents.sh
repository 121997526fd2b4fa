#!/usr/bin/env bash
#SBATCH --job-name=randar_extract
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --mem=256G
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=slurm_logs/%x-%j.out
# Account and partition: sbatch -A ACCOUNT -p PARTITION, or SBATCH_ACCOUNT / SBATCH_PARTITION.
#
# Tokenise ImageNet into per-image code files. Required:
#   IMAGENET_DIR    the folder holding train.tar (members train/<wnid>/<file>.JPEG); the tar is staged to
#                   node-local disk and read in place
#   VQ_CKPT         vq_ds16_c2i.pt (LlamaGen) or maskgit-vqgan-imagenet-f16-256.bin (MaskGIT)
#   CODE_PATH       output root on permanent storage; files are written atomically, so a requeued job
#                   skips what is done
# Optional: TOKENIZER_CONFIG (default configs/tokenization/llamagen.yaml), AUG_MODE (default adm),
#           IMAGE_SIZE (default 256), EXTRA_ARGS.
# shellcheck source=slurm_scripts/common.sh
source "${RANDAR_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm_scripts/common.sh"
need IMAGENET_DIR VQ_CKPT CODE_PATH
activate
stage "$IMAGENET_DIR/train.tar" >/dev/null
vq=$(stage "$VQ_CKPT")
# shellcheck disable=SC2086
torchrun --standalone --nproc_per_node "$GPUS_PER_NODE" tools/extract_latent_codes.py \
  --data-path "$LOCAL_DIR" --code-path "$CODE_PATH" --vq-ckpt "$vq" \
  --config "${TOKENIZER_CONFIG:-configs/tokenization/llamagen.yaml}" \
  --image-size "${IMAGE_SIZE:-256}" --aug-mode "${AUG_MODE:-adm}" ${EXTRA_ARGS:-}
