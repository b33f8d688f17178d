#!/usr/bin/env bash
# Runs the same command as NUM_PROCESSES local JAX processes; the command joins them itself
# (nag_jax.sharding.multihost.start reads NAG_COORDINATOR_ADDRESS, NAG_NUM_PROCESSES, NAG_PROCESS_ID).
#
#   NUM_PROCESSES=2 DEVICES=cpu:2 launch/local_multiprocess.sh python -m nag_jax.main --config ... --workdir ...
#   NUM_PROCESSES=2 DEVICES=gpu:4 launch/local_multiprocess.sh python -m nag_jax.sample --config ...
#
# DEVICES=cpu:K gives each process K simulated CPU devices (gloo collectives); DEVICES=gpu:K gives
# process i the GPUs i*K .. i*K+K-1; unset leaves devices alone. Process 0 prints to the terminal, the
# others log to LOG_DIR/process_<i>.log.
# - If a process fails, the others are killed (they cannot finish their collectives without it), and the
#   launcher exits with the failed process's code. A relaunch resumes from the last checkpoint.
# - SIGTERM or Ctrl-C to the launcher is passed on to every process as SIGTERM: training saves a checkpoint
#   at one step on all processes and stops (exit code 75); the launcher waits for them and exits with it.
set -uo pipefail
[[ $# -gt 0 ]] || { echo "usage: NUM_PROCESSES=N [DEVICES=cpu:K|gpu:K] $0 COMMAND..." >&2; exit 2; }
N=${NUM_PROCESSES:-2}
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "NUM_PROCESSES must be a positive integer, got '$N'" >&2; exit 2; }
PORT=${PORT:-$((20000 + RANDOM % 20000))}
LOG_DIR=${LOG_DIR:-logs}
DEVICES=${DEVICES:-}
case "$DEVICES" in
  cpu:* | gpu:* | "") ;;
  *) echo "DEVICES must be cpu:K or gpu:K, got '$DEVICES'" >&2; exit 2 ;;
esac
mkdir -p "$LOG_DIR"

pids=()
forward_term() {
  echo "launcher: passing SIGTERM on to the $N processes (they save and stop)" >&2
  kill -TERM "${pids[@]}" 2>/dev/null
}
trap forward_term INT TERM

for ((i = 0; i < N; i++)); do
  env_vars=(NAG_COORDINATOR_ADDRESS="127.0.0.1:$PORT" NAG_NUM_PROCESSES="$N" NAG_PROCESS_ID="$i")
  case "$DEVICES" in
    cpu:*) env_vars+=(JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES#cpu:}") ;;
    gpu:*) k=${DEVICES#gpu:}; env_vars+=(CUDA_VISIBLE_DEVICES="$(seq -s, $((i * k)) $((i * k + k - 1)))") ;;
  esac
  if ((i == 0)); then
    env "${env_vars[@]}" "$@" &
  else
    env "${env_vars[@]}" "$@" > "$LOG_DIR/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done

# Wait for every process; the first non-zero exit decides the launcher's code. A process that failed on
# its own (not after a forwarded SIGTERM) takes the others down with it, so none is left behind.
code=0
remaining=$N
while ((remaining > 0)); do
  finished=""
  wait -n -p finished
  rc=$?
  [[ -n ${finished:-} ]] || continue  # the wait was interrupted by the trap; no process ended
  remaining=$((remaining - 1))
  if ((rc != 0 && code == 0)); then
    code=$rc
    if ((rc != 75)); then
      echo "launcher: a process exited with code $rc; stopping the others (logs in $LOG_DIR/)" >&2
      kill -KILL "${pids[@]}" 2>/dev/null
    fi
  fi
done
exit "$code"
