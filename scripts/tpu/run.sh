#!/usr/bin/env bash
# Starts the same training command on every worker (a pod is one JAX program: every host runs it), detached.
# Usage: scripts/tpu/run.sh --config configs/showo/pretrain.py:stage=1,slice=v5e-16 --workdir gs://BUCKET/run ...
# Each worker re-runs the command while it exits with status 75 (SIGTERM: checkpoint saved, resume), see
# worker_loop.sh; follow the logs with scripts/tpu/logs.sh.
source "$(dirname "$0")/env.sh"
[ $# -gt 0 ] || { echo "usage: $0 --config CONFIG --workdir gs://BUCKET/RUN [--config.field=value ...]" >&2; exit 2; }
tpu_ssh all "cd $REMOTE_DIR && nohup bash scripts/tpu/worker_loop.sh $(printf '%q ' "$@") > ~/$LOG 2>&1 < /dev/null &"
echo "started on every worker of $TPU_NAME; logs: scripts/tpu/logs.sh"
