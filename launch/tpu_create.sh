#!/usr/bin/env bash
# Creates the TPU VM slice and installs the runtime on every worker.
#   TPU_NAME=holocine-train ACCELERATOR=v5p-128 ZONE=us-east5-a launch/tpu_create.sh
set -euo pipefail
source "$(dirname "$0")/tpu_env.sh"
"${GCLOUD_TPU[@]}" create "${TPU_NAME}" --accelerator-type "${ACCELERATOR}" --version "${RUNTIME}"
"${GCLOUD_TPU[@]}" ssh "${TPU_NAME}" --worker=all --command \
  "python3 -m venv ~/venv && ~/venv/bin/pip install -U pip && ~/venv/bin/pip install 'jax[tpu]'"
