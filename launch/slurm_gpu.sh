#!/usr/bin/env bash
#SBATCH --job-name=nag_jax
#SBATCH --nodes=2
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --output=slurm-%j.out
# Runs the same command on every task of a SLURM GPU job, joined by jax.distributed.
#
#   sbatch --nodes=4 launch/slurm_gpu.sh python -m nag_jax.main --config configs/x.py --workdir /shared/runs/x
#   PER=node sbatch --nodes=4 --ntasks-per-node=1 launch/slurm_gpu.sh python -m nag_jax.main ...
#
# PER=gpu (default): one process per GPU (--ntasks-per-node = GPUs per node); task i sees only GPU
# SLURM_LOCALID. PER=node: one process per node driving all its GPUs (--ntasks-per-node=1). Process 0
# runs on the first node and coordinates on PORT. The workdir must be on a filesystem all nodes share.
set -euo pipefail
[[ $# -gt 0 ]] || { echo "usage: [PER=gpu|node] sbatch $0 COMMAND..." >&2; exit 2; }
export PER=${PER:-gpu}
[[ $PER == gpu || $PER == node ]] || { echo "PER must be gpu or node, got '$PER'" >&2; exit 2; }
PORT=${PORT:-$((20000 + SLURM_JOB_ID % 20000))}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export NAG_COORDINATOR_ADDRESS="$HEAD:$PORT" NAG_NUM_PROCESSES="$SLURM_NTASKS"

srun --kill-on-bad-exit=1 bash -c '
  export NAG_PROCESS_ID=$SLURM_PROCID
  if [[ $PER == gpu ]]; then export CUDA_VISIBLE_DEVICES=$SLURM_LOCALID; fi
  exec "$@"' bash "$@"
