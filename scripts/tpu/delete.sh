#!/usr/bin/env bash
# Deletes the slice and its queued-resource request (the run's workdir in the bucket stays).
# Usage: scripts/tpu/delete.sh
source "$(dirname "$0")/env.sh"
gcloud compute tpus queued-resources delete "$TPU_NAME" --zone "$ZONE" --force --quiet
