#!/usr/bin/env bash
# Runs ON a TPU worker (started by run.sh): the training command, again after each preemption-style exit.
# Status 75 means SIGTERM arrived, a checkpoint was saved and the run can resume (mmjax.cli.EXIT_PREEMPTED): a
# maintenance event or a stop that left the VM alive. Any other status ends the loop with it.
cd "$(dirname "$0")/../.."
export MMJAX_DISTRIBUTED=1  # jax.distributed.initialize() (mmjax.train.sharding): the workers find each other
while true; do
  .venv/bin/python -m mmjax.train "$@"
  status=$?
  [ "$status" -eq 75 ] || exit "$status"
  echo "$(date +%T) preempted (status 75): resuming from the last checkpoint"
  sleep 30
done
