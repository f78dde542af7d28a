#!/usr/bin/env bash
# Keeps a run going on a spot slice until it finishes: when the slice is preempted (its queued resource
# SUSPENDED or gone), deletes it, requests a new one, installs and starts the same command, which resumes from
# the last checkpoint in the bucket. The run is finished when its metrics.jsonl has the final evaluation.
# Usage: SPOT=1 scripts/tpu/supervise.sh --config CONFIG --workdir gs://BUCKET/RUN [--config.field=value ...]
source "$(dirname "$0")/env.sh"
here=$(dirname "$0")
workdir=""
prev=""
for arg in "$@"; do  # the --workdir value (both "--workdir X" and "--workdir=X")
  [ "$prev" = --workdir ] && workdir=$arg
  case "$arg" in --workdir=*) workdir=${arg#--workdir=} ;; esac
  prev=$arg
done
[[ "$workdir" == gs://* ]] || { echo "supervise.sh needs --workdir gs://...: a new slice starts empty" >&2; exit 2; }
finished() { gcloud storage cat "$workdir/metrics.jsonl" 2>/dev/null | grep -q '"final": true'; }
until finished; do
  case "$(slice_state)" in
    ACTIVE) ;;
    NONE) "$here/create.sh" && "$here/install.sh" && "$here/run.sh" "$@" ;;
    WAITING_FOR_RESOURCES|PROVISIONING|ACCEPTED|CREATING) ;;
    *) "$here/delete.sh" ;;  # SUSPENDED (preempted), FAILED: request a new slice on the next round
  esac
  sleep 300
done
echo "$workdir has its final evaluation: deleting $TPU_NAME"
"$here/delete.sh"
