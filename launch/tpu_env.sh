# Shared settings for the TPU VM scripts; edit or export before sourcing.
#   TPU_NAME    the TPU VM (slice) name         ZONE   e.g. us-east5-a
#   ACCELERATOR e.g. v5p-128 (64 chips) / v5p-512 (256 chips)
#   PROJECT     gcloud project                 RUNTIME TPU software version
#   REMOTE_DIR  checkout location on every worker
: "${TPU_NAME:=holocine-train}"
: "${ZONE:=us-east5-a}"
: "${ACCELERATOR:=v5p-128}"
: "${PROJECT:=$(gcloud config get-value project 2>/dev/null)}"
: "${RUNTIME:=v2-alpha-tpuv5}"
: "${REMOTE_DIR:=holocine-jax}"
GCLOUD_TPU=(gcloud compute tpus tpu-vm --project "${PROJECT}" --zone "${ZONE}")
