#!/usr/bin/env bash
# Requests the slice as a queued resource and waits until it is ACTIVE (queued requests wait for capacity).
# Usage: scripts/tpu/create.sh            (settings: scripts/tpu/env.sh)
source "$(dirname "$0")/env.sh"
spot=()
[ "$SPOT" = 1 ] && spot=(--spot)
gcloud compute tpus queued-resources create "$TPU_NAME" --node-id "$TPU_NAME" --zone "$ZONE" \
  --accelerator-type "$ACCELERATOR_TYPE" --runtime-version "$RUNTIME_VERSION" "${spot[@]}"
while true; do
  state=$(slice_state)
  echo "$(date +%T) $TPU_NAME: $state"
  case "$state" in
    ACTIVE) exit 0 ;;
    FAILED|SUSPENDED|NONE) echo "the request for $TPU_NAME ended as $state" >&2; exit 1 ;;
  esac
  sleep 60
done
