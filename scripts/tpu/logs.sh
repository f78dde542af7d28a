#!/usr/bin/env bash
# Follows a worker's training log (default worker 0, the one that logs metrics).
# Usage: scripts/tpu/logs.sh [WORKER]
source "$(dirname "$0")/env.sh"
tpu_ssh "${1:-0}" "tail -n 200 -F ~/$LOG"
