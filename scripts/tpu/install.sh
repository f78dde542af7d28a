#!/usr/bin/env bash
# Copies this checkout (its committed HEAD) to every worker and installs it with the TPU extras in a venv there.
# Usage: scripts/tpu/install.sh
source "$(dirname "$0")/env.sh"
cd "$(git rev-parse --show-toplevel)"
archive=$(mktemp /tmp/mmjax-XXXXXX.tar.gz)
git archive --format tar.gz -o "$archive" HEAD
gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:mmjax.tar.gz" --zone "$ZONE" --worker all
rm -f "$archive"
tpu_ssh all "rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar xzf mmjax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR \
  && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[tpu]'"
