#!/usr/bin/env bash
# The job wrapper launch/tpu_pod.sh starts (detached) on every worker: runs COMMAND joined to the other workers,
# reruns it while it exits 75 (a SIGTERM made it save a checkpoint; the rerun resumes), and records the exit
# code in logs/JOB.HOST.exit. SIGTERM to this wrapper is passed on to the command, which saves and stops;
# the wrapper then stops too.
#
#   bash launch/worker_run.sh JOB NUM_WORKERS COMMAND...
set -u
job=$1 workers=$2
shift 2
stop=0 child=""
trap 'stop=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT
mkdir -p logs
while true; do
  NAG_DISTRIBUTED=auto NAG_NUM_PROCESSES=$workers "$@" &
  child=$!
  while true; do  # a trapped signal interrupts wait; wait again until the command has ended
    wait "$child"
    code=$?
    kill -0 "$child" 2>/dev/null || break
  done
  if [ "$code" -ne 75 ] || [ "$stop" -eq 1 ]; then break; fi
  echo "worker_run: the command stopped after saving (exit 75); resuming it"
done
echo "$code" > "logs/$job.$(hostname).exit"
exit "$code"
