#!/usr/bin/env bash
# Runs one nag_jax command on every worker of a Cloud TPU VM slice (creating the slice if needed), detached,
# with a log per worker; the command joins the workers itself (NAG_DISTRIBUTED=auto: JAX's TPU detection).
#
#   TPU_NAME=nag-v5p-64 ZONE=us-east5-a ACCELERATOR=v5p-64 launch/tpu_pod.sh \
#     python -m nag_jax.main --config configs/imagenet_finetune_nag.py:DiT --workdir gs://BUCKET/runs/dit-nag
#
# Env: TPU_NAME, ZONE (required); ACCELERATOR (default v4-8; used when creating: v4-N, v5litepod-N (v5e),
# v5p-N, v6e-N); RUNTIME (default: the TPU VM image of that generation, below); PROJECT (default: gcloud's);
# SPOT=1 (a spot slice); SKIP_INSTALL=1 (reuse the code and packages on the workers of an existing slice); RELAUNCH=1 (stay in the
# foreground and, when a spot slice is preempted, recreate it and relaunch until the run completes); WORK_DIR
# (default nag_jax, under each worker's home).
#
# On each worker: this checkout (without .git) goes to ~/WORK_DIR/code, the only folder the launcher ever
# replaces; it is installed with `pip install -c constraints.txt -e ".[tf,gcs,tpu]"`, so jax[tpu] and the
# rest are the versions the test suite passed with. The command runs in ~/WORK_DIR (`configs/` links to the
# code's), so relative paths land there and survive relaunches; prefer gs:// for workdirs and outputs.
# launch/worker_run.sh wraps the command on each worker: a command that exits 75 (SIGTERM: it saved a
# checkpoint) is rerun there, which resumes it; its exit code goes to logs/JOB.HOST.exit.
set -euo pipefail
[[ $# -gt 0 ]] || { echo "usage: TPU_NAME=... ZONE=... $0 COMMAND..." >&2; exit 2; }
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR=${ACCELERATOR:-v4-8}
WORK_DIR=${WORK_DIR:-nag_jax}
[[ $WORK_DIR =~ ^[A-Za-z0-9._/-]+$ && $WORK_DIR != /* && $WORK_DIR != *..* ]] ||
  { echo "WORK_DIR must be a plain relative folder name, got '$WORK_DIR'" >&2; exit 2; }

# The TPU VM software version of each generation (cloud.google.com/tpu/docs/runtimes).
case "$ACCELERATOR" in
  v4-*) default_runtime=tpu-ubuntu2204-base ;;
  v5litepod-* | v5e-*) default_runtime=v2-alpha-tpuv5-lite ;;
  v5p-*) default_runtime=v2-alpha-tpuv5 ;;
  v6e-*) default_runtime=v2-alpha-tpuv6e ;;
  *) echo "unknown ACCELERATOR '$ACCELERATOR' (v4-N, v5litepod-N, v5p-N or v6e-N); set RUNTIME too" >&2
     [[ -n ${RUNTIME:-} ]] || exit 2 ;;
esac
RUNTIME=${RUNTIME:-$default_runtime}
gcloud_args=(--zone "$ZONE")
[[ -n ${PROJECT:-} ]] && gcloud_args+=(--project "$PROJECT")
JOB=${JOB:-job-$(date +%Y%m%d-%H%M%S)}
repo=$(cd "$(dirname "$0")/.." && pwd)

state() { gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gcloud_args[@]}" --format='value(state)' 2>/dev/null; }
on_all_workers() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=all --command "$1"; }

create_slice() {
  echo "creating TPU VM $TPU_NAME ($ACCELERATOR, $RUNTIME) in $ZONE"
  local create_args=(--accelerator-type "$ACCELERATOR" --version "$RUNTIME")
  [[ ${SPOT:-0} == 1 ]] && create_args+=(--spot)
  gcloud compute tpus tpu-vm create "$TPU_NAME" "${gcloud_args[@]}" "${create_args[@]}"
}

install_code() {
  local archive
  archive=$(mktemp --suffix=.tar.gz)
  tar -czf "$archive" -C "$repo" --exclude=.git --exclude='*.egg-info' --exclude=__pycache__ .
  gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":nag_jax_code.tar.gz "${gcloud_args[@]}" --worker=all
  rm -f "$archive"
  # Only ~/WORK_DIR/code is replaced: it is unpacked beside, then swapped in.
  on_all_workers "set -e; mkdir -p ~/$WORK_DIR/logs; rm -rf ~/$WORK_DIR/code.new; mkdir ~/$WORK_DIR/code.new
    tar -xzf ~/nag_jax_code.tar.gz -C ~/$WORK_DIR/code.new && rm -f ~/nag_jax_code.tar.gz
    if [ -d ~/$WORK_DIR/code ]; then mv ~/$WORK_DIR/code ~/$WORK_DIR/code.old; fi
    mv ~/$WORK_DIR/code.new ~/$WORK_DIR/code && rm -rf ~/$WORK_DIR/code.old
    ln -sfn code/configs ~/$WORK_DIR/configs
    cd ~/$WORK_DIR/code && python3 -m pip install -q -c constraints.txt -e '.[tf,gcs,tpu]'"
}

num_workers() {
  gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gcloud_args[@]}" --format=json |
    python3 -c 'import json, sys; print(len(json.load(sys.stdin)["networkEndpoints"]))'
}

start_job() {
  local command workers
  command=$(printf '%q ' "$@")
  workers=$(num_workers)
  # Detached (setsid nohup), one log per worker; launch/worker_run.sh reruns a command that saved on SIGTERM.
  on_all_workers "cd ~/$WORK_DIR && mkdir -p logs && setsid nohup bash code/launch/worker_run.sh $JOB $workers \
    $command > logs/$JOB.\$(hostname).log 2>&1 < /dev/null &"
  local ssh="gcloud compute tpus tpu-vm ssh $TPU_NAME ${gcloud_args[*]}"
  echo "started $JOB on $workers workers of $TPU_NAME; logs in ~/$WORK_DIR/logs/ on each worker"
  echo "  follow: $ssh --worker=0 --command 'tail -f ~/$WORK_DIR/logs/$JOB.*.log'"
  echo "  stop:   $ssh --worker=all --command 'pkill -TERM -f \"worker_run.sh $JOB\"'   (it saves a checkpoint first)"
}

job_finished() {  # worker 0 wrote its exit code: the run ended (0: completed)
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=0 \
    --command "cat ~/$WORK_DIR/logs/$JOB.*.exit 2>/dev/null" 2>/dev/null
}

created=0
if [[ -z $(state) ]]; then create_slice; created=1; fi
[[ ${SKIP_INSTALL:-0} == 1 && $created == 0 ]] || install_code  # a new slice always gets the code
start_job "$@"

[[ ${RELAUNCH:-0} == 1 ]] || exit 0
while true; do
  sleep "${POLL_SECONDS:-300}"
  case "$(state)" in
    PREEMPTED | TERMINATED | "")
      echo "$TPU_NAME was preempted; recreating it and resuming $JOB"
      gcloud compute tpus tpu-vm delete "$TPU_NAME" "${gcloud_args[@]}" --quiet || true
      create_slice
      install_code
      start_job "$@" ;;
    READY)
      code=$(job_finished || true)
      if [[ -n $code ]]; then echo "$JOB ended with code $code"; exit "$code"; fi ;;
  esac
done
