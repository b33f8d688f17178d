#!/usr/bin/env bash
# Runs the same command as NUM_PROCESSES local JAX processes joined by jax.distributed over 127.0.0.1.
#
#   NUM_PROCESSES=2 DEVICES=cpu:4 launch/local_multiprocess.sh python -m nag_jax.main --config ... --workdir ...
#   NUM_PROCESSES=2 DEVICES=gpu:4 launch/local_multiprocess.sh python -m nag_jax.sample --config ...
#
# DEVICES=cpu:K gives each process K simulated CPU devices (gloo collectives); DEVICES=gpu:K gives
# process i the GPUs i*K .. i*K+K-1; unset leaves devices alone. Process 0 prints to the terminal, the
# others log to LOG_DIR/process_<i>.log. If any process fails, the others are stopped.
set -euo pipefail
[[ $# -gt 0 ]] || { echo "usage: NUM_PROCESSES=N [DEVICES=cpu:K|gpu:K] $0 COMMAND..." >&2; exit 2; }
N=${NUM_PROCESSES:-2}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
LOG_DIR=${LOG_DIR:-logs}
DEVICES=${DEVICES:-}
mkdir -p "$LOG_DIR"

pids=()
stop_all() { kill "${pids[@]}" 2>/dev/null || true; }
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < N; i++)); do
  env_vars=(NAG_COORDINATOR_ADDRESS="127.0.0.1:$PORT" NAG_NUM_PROCESSES="$N" NAG_PROCESS_ID="$i")
  case "$DEVICES" in
    cpu:*) env_vars+=(JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES#cpu:}") ;;
    gpu:*) k=${DEVICES#gpu:}; env_vars+=(CUDA_VISIBLE_DEVICES="$(seq -s, $((i * k)) $((i * k + k - 1)))") ;;
    "") ;;
    *) echo "DEVICES must be cpu:K or gpu:K, got '$DEVICES'" >&2; exit 2 ;;
  esac
  if ((i == 0)); then
    env "${env_vars[@]}" "$@" &
  else
    env "${env_vars[@]}" "$@" > "$LOG_DIR/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done

for ((i = 0; i < N; i++)); do
  if ! wait -n; then
    echo "a process failed; stopping the others (logs in $LOG_DIR/)" >&2
    stop_all
    wait
    exit 1
  fi
done
