#!/usr/bin/env bash
# Runs the same command on every worker of a Cloud TPU VM slice (creating the slice if needed).
#
#   TPU_NAME=nag-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32 launch/tpu_pod.sh \
#     python -m nag_jax.main --config configs/x.py --workdir gs://BUCKET/runs/x
#
# Env: TPU_NAME, ZONE (required); ACCELERATOR (default v4-8, used when creating), RUNTIME (default
# tpu-ubuntu2204-base), PROJECT (default: gcloud's), SPOT=1 (preemptible slice), SKIP_INSTALL=1 (reuse
# the code and packages already on the workers). This checkout (without .git) is copied to ~/nag_jax on
# every worker and installed with `jax[tpu]`; JAX then finds the other workers itself (NAG_DISTRIBUTED=auto).
# Use a gs:// workdir (or a shared filesystem): only process 0 writes logs, all write checkpoints.
set -euo pipefail
[[ $# -gt 0 ]] || { echo "usage: TPU_NAME=... ZONE=... $0 COMMAND..." >&2; exit 2; }
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR=${ACCELERATOR:-v4-8}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
gcloud_args=(--zone "$ZONE")
[[ -n ${PROJECT:-} ]] && gcloud_args+=(--project "$PROJECT")

if ! gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gcloud_args[@]}" > /dev/null 2>&1; then
  echo "creating TPU VM $TPU_NAME ($ACCELERATOR, $RUNTIME) in $ZONE"
  create_args=(--accelerator-type "$ACCELERATOR" --version "$RUNTIME")
  [[ ${SPOT:-0} == 1 ]] && create_args+=(--spot)
  gcloud compute tpus tpu-vm create "$TPU_NAME" "${gcloud_args[@]}" "${create_args[@]}"
fi

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=all --command "$1"
}

if [[ ${SKIP_INSTALL:-0} != 1 ]]; then
  repo=$(cd "$(dirname "$0")/.." && pwd)
  archive=$(mktemp --suffix=.tar.gz)
  trap 'rm -f "$archive"' EXIT
  tar -czf "$archive" -C "$repo" --exclude=.git --exclude='*.egg-info' --exclude=__pycache__ .
  gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":nag_jax.tar.gz "${gcloud_args[@]}" --worker=all
  on_all_workers 'rm -rf ~/nag_jax && mkdir -p ~/nag_jax && tar -xzf ~/nag_jax.tar.gz -C ~/nag_jax &&
    pip install -q -U "jax[tpu]" && pip install -q -e ~/nag_jax'
fi

command=$(printf '%q ' "$@")
on_all_workers "cd ~/nag_jax && NAG_DISTRIBUTED=auto $command"
