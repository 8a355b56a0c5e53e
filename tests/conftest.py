"""Test setup: 8 virtual CPU devices (for mesh tests) before jax is imported anywhere."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
  "ALLOW_MULTIPLE_LIBTPU_LOAD", "1"
)  # deviceless TPU compiles in parallel workers
