#!/usr/bin/env bash
# Follows the training log of one worker (default 0, the one that prints metrics).
#   launch/tpu_logs.sh [WORKER]
set -euo pipefail
source "$(dirname "$0")/tpu_env.sh"
"${GCLOUD_TPU[@]}" ssh "${TPU_NAME}" --worker="${1:-0}" --command "tail -n 100 -f ~/train.log"
