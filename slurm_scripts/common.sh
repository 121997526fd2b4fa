#!/usr/bin/env bash
# Shared by the RandAR SLURM scripts: checks, staging to node-local disk, signal handling.
# Every path, account and partition comes from environment variables; nothing personal is hard-coded.
#   RANDAR_ROOT     the repository (default: the folder sbatch was called from)
#   RANDAR_ACTIVATE a command that activates the Python environment (default: source $RANDAR_ROOT/.venv/bin/activate)
#   LOCAL_DIR       node-local scratch (default: $SLURM_TMPDIR, else /tmp/randar-$SLURM_JOB_ID)
set -euo pipefail

RANDAR_ROOT=${RANDAR_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
LOCAL_DIR=${LOCAL_DIR:-${SLURM_TMPDIR:-/tmp/randar-${SLURM_JOB_ID:-local}}}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
export RANDAR_ROOT LOCAL_DIR GPUS_PER_NODE

# need VAR...: stop with a clear message when a required variable is unset or empty.
need() {
  local v
  for v in "$@"; do
    if [ -z "${!v:-}" ]; then
      echo "error: set $v before submitting (e.g. sbatch --export=ALL,$v=... $0); see slurm_scripts/README.md" >&2
      exit 2
    fi
  done
}

# activate: enter the repository and its Python environment.
activate() {
  cd "$RANDAR_ROOT"
  if [ -n "${RANDAR_ACTIVATE:-}" ]; then
    eval "$RANDAR_ACTIVATE"
  elif [ -f "$RANDAR_ROOT/.venv/bin/activate" ]; then
    # shellcheck disable=SC1091
    source "$RANDAR_ROOT/.venv/bin/activate"
  fi
  mkdir -p "$LOCAL_DIR"
}

# stage SRC: copy a file to node-local disk (once per node) and print its local path.
stage() {
  local src=$1 dst
  dst="$LOCAL_DIR/$(basename "$src")"
  [ -e "$src" ] || { echo "error: $src does not exist" >&2; exit 2; }
  if [ ! -e "$dst.staged" ]; then
    cp -r "$src" "$dst"
    touch "$dst.staged"
  fi
  echo "$dst"
}

# stage_unpacked ARCHIVE.tar: stage a tar archive, unpack it next to itself (once), print the folder it holds.
stage_unpacked() {
  local dst
  dst=$(stage "$1")
  if [ ! -e "$dst.unpacked" ]; then
    tar -xf "$dst" -C "$LOCAL_DIR"
    touch "$dst.unpacked"
  fi
  echo "${dst%.tar}"
}

# run_requeueable PATTERN CMD...: run CMD in the background. On SIGUSR1 (sent by SLURM before the time limit
# through `#SBATCH --signal=B:USR1@600`) pass it on to this node's processes matching PATTERN (the training
# workers save a checkpoint and exit), wait for them, then requeue the job; the requeued job resumes.
run_requeueable() {
  local pattern=$1 pid rc=0
  shift
  GOT_USR1=0
  trap 'GOT_USR1=1' USR1
  # The launcher ignores USR1 (pkill -f also matches its command line); the Python workers install their own
  # handler, which replaces the inherited "ignore".
  (trap '' USR1; exec "$@") &
  pid=$!
  wait "$pid" || rc=$?  # a trapped signal interrupts the wait
  if [ "$GOT_USR1" = 1 ]; then
    echo "time limit near: checkpointing, then requeueing"
    pkill -USR1 -f "$pattern" || true
    wait "$pid" || true
    scontrol requeue "$SLURM_JOB_ID"
    return 0
  fi
  return "$rc"
}
