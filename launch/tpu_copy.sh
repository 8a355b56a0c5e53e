#!/usr/bin/env bash
# Copies this checkout to every worker and installs its requirements there.
#   launch/tpu_copy.sh
set -euo pipefail
source "$(dirname "$0")/tpu_env.sh"
root="$(cd "$(dirname "$0")/.." && pwd)"
tar -C "${root}" --exclude .git --exclude '__pycache__' -czf /tmp/holocine-jax.tgz .
"${GCLOUD_TPU[@]}" scp /tmp/holocine-jax.tgz "${TPU_NAME}:~/holocine-jax.tgz" --worker=all
"${GCLOUD_TPU[@]}" ssh "${TPU_NAME}" --worker=all --command \
  "mkdir -p ~/${REMOTE_DIR} && tar -C ~/${REMOTE_DIR} -xzf ~/holocine-jax.tgz && \
   ~/venv/bin/pip install -r ~/${REMOTE_DIR}/requirements.txt"
