"""Device mesh, logical-axis rules and sharded initialisation.

One mesh with axes (data, fsdp, context, tensor). Parameters and activations carry logical axis
names; a rules table (from the config) maps them to mesh axes. State is initialised already
sharded: eval_shape -> shardings -> jit(init, out_shardings).
"""

import contextlib
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from flax.core import meta

MESH_AXES = ("data", "fsdp", "context", "tensor")

# (logical name, mesh axes). Params: FSDP on the model dim, tensor parallel on heads / FFN.
# Activations: batch over data+fsdp, sequence over context, heads over tensor.
DEFAULT_LOGICAL_RULES = (
  ("layers", None),
  ("embed", "fsdp"),
  ("embed_out", "tensor"),
  ("heads", "tensor"),
  ("kv", None),
  ("lora_rank", None),
  ("mlp", "tensor"),
  ("patch", None),
  ("freq", None),
  ("text_embed", None),
  ("vocab", "tensor"),
  ("rel_buckets", None),
  ("conv_in", None),
  ("conv_out", "tensor"),
  ("act_batch", ("data", "fsdp")),
  ("act_length", "context"),
  ("act_heads", "tensor"),
  ("act_kv", None),
  ("act_embed", None),
  ("act_mlp", "tensor"),
  ("act_text", None),
  ("act_frames", None),
  ("act_height", None),
  ("act_width", None),
  ("act_channels", None),
)


def mesh_shape(sizes: dict, num_devices: int) -> tuple[int, ...]:
  """Resolves axis sizes in MESH_AXES order; at most one -1 takes the remaining devices."""
  unknown = [a for a in MESH_AXES if sizes.get(a, 1) == -1]
  if len(unknown) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {unknown}")
  fixed = math.prod(sizes.get(a, 1) for a in MESH_AXES if a not in unknown)
  if num_devices % fixed:
    raise ValueError(f"mesh {dict(sizes)} does not divide {num_devices} devices")
  shape = tuple(num_devices // fixed if a in unknown else sizes.get(a, 1) for a in MESH_AXES)
  if math.prod(shape) != num_devices:
    raise ValueError(
      f"mesh {dict(zip(MESH_AXES, shape, strict=True))} needs {math.prod(shape)} devices, "
      f"have {num_devices}"
    )
  return shape


def make_mesh(sizes: dict, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Mesh over all (or the given) devices with sizes from the config's `mesh` block."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(dict(sizes), len(devices))
  return jax.make_mesh(
    shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES), devices=devices
  )


def logical_rules(rules) -> tuple:
  """Normalises a config rules table (lists from ml_collections) to flax's tuple form."""
  out = []
  for name, axes in rules:
    out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
  return tuple(out)


@contextlib.contextmanager
def activate(mesh: jax.sharding.Mesh, rules):
  """Makes `mesh` and the logical rules current, so activation constraints take effect."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(logical_rules(rules)):
    yield


def batch_axes(rules) -> tuple[str, ...]:
  """Mesh axes the batch ('act_batch') is split over under `rules`."""
  axes = nn.logical_to_mesh_axes(("act_batch",), logical_rules(rules))[0]
  return (axes,) if isinstance(axes, str) else tuple(axes or ())


def batch_shards(mesh: jax.sharding.Mesh, rules) -> int:
  """How many ways the batch is split on `mesh` (global batch sizes must be multiples)."""
  return math.prod(mesh.shape[a] for a in batch_axes(rules))


def logical_specs(boxed_tree):
  """Logical PartitionSpecs of a tree of boxed (LogicallyPartitioned) values."""
  return nn.get_partition_spec(boxed_tree)


def shardings_for(boxed_tree, mesh, rules):
  """NamedShardings for a tree of boxed abstract values."""
  return nn.logical_to_mesh_sharding(logical_specs(boxed_tree), mesh, logical_rules(rules))


def init_sharded(init_fn, mesh, rules, *args):
  """Runs `init_fn(*args)` -> boxed params directly into their shardings; returns plain arrays.

  Nothing is materialised unsharded: shapes come from eval_shape, then a jitted init writes each
  parameter into its NamedSharding.
  """
  with activate(mesh, rules):
    abstract = jax.eval_shape(init_fn, *args)
    shardings = shardings_for(abstract, mesh, rules)
    params = jax.jit(init_fn, out_shardings=shardings)(*args)
  return meta.unbox(params), meta.unbox(shardings)


def abstract_params(init_fn, *args):
  """(plain ShapeDtypeStruct tree, logical spec tree) without allocating anything."""
  boxed = jax.eval_shape(init_fn, *args)
  return meta.unbox(boxed), logical_specs(boxed)


def bytes_per_device(abstract_tree, spec_tree, mesh_sizes: dict, rules) -> int:
  """Bytes one device holds for `abstract_tree` sharded by logical specs on a mesh of sizes."""
  rules = logical_rules(rules)
  total = 0
  leaves = jax.tree.leaves(abstract_tree)
  specs = jax.tree.leaves(spec_tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  for leaf, spec in zip(leaves, specs, strict=True):
    mesh_spec = nn.logical_to_mesh_axes(spec, rules)
    shard_shape = []
    for dim, axes in zip(leaf.shape, tuple(mesh_spec) + (None,) * leaf.ndim, strict=False):
      names = (axes,) if isinstance(axes, str) else (axes or ())
      shard_shape.append(-(-dim // math.prod(mesh_sizes.get(a, 1) for a in names)))
    total += math.prod(shard_shape) * np.dtype(leaf.dtype).itemsize
  return total
