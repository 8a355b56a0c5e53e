#!/usr/bin/env bash
# Stops training on every worker with SIGTERM (the trainer saves a checkpoint and exits), then
# optionally deletes the slice:  launch/tpu_stop.sh [--delete]
set -euo pipefail
source "$(dirname "$0")/tpu_env.sh"
"${GCLOUD_TPU[@]}" ssh "${TPU_NAME}" --worker=all --command \
  "test -f ~/train.pid && kill -TERM \$(cat ~/train.pid) || true"
if [[ "${1:-}" == "--delete" ]]; then
  "${GCLOUD_TPU[@]}" delete "${TPU_NAME}" --quiet
fi
