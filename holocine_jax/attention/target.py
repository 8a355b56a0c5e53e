"""The platform attention is compiled for: the devices of the mesh in context, else the default.

Under `jax.set_mesh` (e.g. `sharding.activate`) of deviceless TPU devices on a CPU host, code is
compiled for TPU although `jax.default_backend()` is "cpu": implementation choice, Pallas
interpret mode and the kernel style must follow the mesh, not the host.
"""

import jax


def platform() -> str:
  """ "tpu", "gpu" or "cpu": the platform of the mesh in context (inside jit and shard_map too),
  else `jax.default_backend()`."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  if device is None:
    return jax.default_backend()
  return device.platform
