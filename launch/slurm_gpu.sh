#!/usr/bin/env bash
#SBATCH --job-name=nag_jax
#SBATCH --nodes=2
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --output=slurm-%j.out
# Runs the same command on every task of a SLURM GPU job; the command joins the tasks itself
# (nag_jax.sharding.multihost.start reads NAG_COORDINATOR_ADDRESS, NAG_NUM_PROCESSES, NAG_PROCESS_ID).
#
#   sbatch --nodes=4 launch/slurm_gpu.sh python -m nag_jax.main --config configs/x.py --workdir /shared/runs/x
#   PER=node sbatch --nodes=4 --ntasks-per-node=1 launch/slurm_gpu.sh python -m nag_jax.main ...
#
# PER=gpu (default): one process per GPU (--ntasks-per-node = GPUs per node); task i sees only GPU
# SLURM_LOCALID. PER=node: one process per node driving all the GPUs SLURM gives it (--ntasks-per-node=1).
# Either way each process drives every GPU it sees (JAX's own SLURM default would keep one). Process 0 runs on
# the first node and coordinates on PORT. The workdir must be on a filesystem all nodes share, or gs://.
# Install on the nodes with `pip install -c constraints.txt -e ".[tf,gcs]"` and `jax[cuda12]` of the same
# version. scancel sends SIGTERM: training saves a checkpoint and exits 75; resubmit to resume.
set -euo pipefail
[[ $# -gt 0 ]] || { echo "usage: [PER=gpu|node] sbatch $0 COMMAND..." >&2; exit 2; }
export PER=${PER:-gpu}
[[ $PER == gpu || $PER == node ]] || { echo "PER must be gpu or node, got '$PER'" >&2; exit 2; }
PORT=${PORT:-$((20000 + SLURM_JOB_ID % 20000))}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)  # reads all: no SIGPIPE under pipefail
export NAG_COORDINATOR_ADDRESS="$HEAD:$PORT" NAG_NUM_PROCESSES="$SLURM_NTASKS"

# PER=gpu: task SLURM_LOCALID takes that entry of the GPUs SLURM gave the node (CUDA_VISIBLE_DEVICES), or
# that ordinal when SLURM set none.
srun --kill-on-bad-exit=1 bash -c '
  export NAG_PROCESS_ID=$SLURM_PROCID
  if [[ $PER == gpu ]]; then
    IFS=, read -ra gpus <<< "${CUDA_VISIBLE_DEVICES:-}"
    export CUDA_VISIBLE_DEVICES=${gpus[$SLURM_LOCALID]:-$SLURM_LOCALID}
  fi
  exec "$@"' bash "$@"
