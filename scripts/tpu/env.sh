# Settings shared by scripts/tpu/*.sh (sourced, not run). Override any of them in the environment, e.g.
#   TPU_NAME=showo-s1 ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-16 scripts/tpu/create.sh
# gcloud names v5e slices `v5litepod-N` (N chips; mmjax's configs call the same slice `v5e-N`), v5p / v4 slices
# `v5p-N` / `v4-N` (N TensorCores, two per chip) and v6e slices `v6e-N`.
set -euo pipefail
: "${TPU_NAME:=mmjax}"
: "${ZONE:=us-west4-a}"
: "${ACCELERATOR_TYPE:=v5litepod-16}"
: "${RUNTIME_VERSION:=v2-alpha-tpuv5-lite}"  # v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e, v4: tpu-ubuntu2204-base
: "${SPOT:=0}"                              # 1: a spot slice (cheaper, preemptible: see supervise.sh)
: "${REMOTE_DIR:=mmjax}"                    # the checkout on every worker, relative to the login user's home
: "${LOG:=mmjax_train.log}"                 # each worker's log, in the same home

tpu_ssh() {  # tpu_ssh WORKER COMMAND: run COMMAND on one worker (0, 1, ...) or on all of them ("all")
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker "$1" --command "$2"
}

slice_state() {  # ACTIVE, WAITING_FOR_RESOURCES, PROVISIONING, SUSPENDED, FAILED, ... or NONE
  gcloud compute tpus queued-resources describe "$TPU_NAME" --zone "$ZONE" --format 'value(state.state)' \
    2>/dev/null || echo NONE
}
