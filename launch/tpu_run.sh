#!/usr/bin/env bash
# Starts training on every worker at once, in the background (log ~/train.log, pid ~/train.pid).
# Each worker runs the same command and jax.distributed.initialize() finds the others
# (distributed.initialize is on in the A14B config). WORKDIR must be shared by all workers (gs://).
#   WORKDIR=gs://my-bucket/runs/a14b-high launch/tpu_run.sh configs/wan22_t2v_a14b.py:expert=high,data_dir=gs://my-bucket/holocine_shots
set -euo pipefail
source "$(dirname "$0")/tpu_env.sh"
config="${1:?usage: tpu_run.sh CONFIG[:ARG] [--set key=value ...]}"
shift
: "${WORKDIR:?set WORKDIR to a bucket path shared by all workers}"
"${GCLOUD_TPU[@]}" ssh "${TPU_NAME}" --worker=all --command \
  "cd ~/${REMOTE_DIR} && nohup ~/venv/bin/python -m holocine_jax.train --config '${config}' \
   --workdir '${WORKDIR}' $* > ~/train.log 2>&1 & echo \$! > ~/train.pid"
