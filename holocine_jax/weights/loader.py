"""Streaming loader: PyTorch checkpoint files -> params placed straight into their shardings.

Each parameter is assembled shard by shard under its NamedSharding: each addressable device's
index is mapped back through the key map's transform to the file-backed source tensor(s), so a
host reads only the slices its own devices hold (a scanned parameter reads only the layers in
its index). After a parameter is built its source pages are released, so host memory holds about
one parameter's shard at a time (plus what the devices keep, which on TPU is HBM).
Source tensors must be floating point (checked before anything is read) and their values finite
(checked per slice as it is read, after the cast to the parameter dtype) unless allowed.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from holocine_jax import sharding
from holocine_jax.weights import formats, keymap, reader


class WeightValueError(ValueError):
  """Checkpoint tensors that cannot become parameters: a non-floating dtype or non-finite values."""


def param_shardings(specs, mesh, rules):
  """NamedShardings for a tree of logical PartitionSpecs under the config's rules table."""
  return nn.logical_to_mesh_sharding(specs, mesh, sharding.logical_rules(rules))


def _flat(tree) -> dict[str, object]:
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def unflatten(flat: dict):
  """{'a/b': x} -> {'a': {'b': x}}."""
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def source_dtypes(checkpoint: reader.Checkpoint, plan) -> dict[str, int]:
  """{dtype name: number of tensors} over the checkpoint tensors that `plan` reads."""
  counts = collections.Counter(
    str(checkpoint[src.key].dtype) for sources in plan.values() for src in sources
  )
  return dict(sorted(counts.items()))


def check_dtypes(checkpoint: reader.Checkpoint, plan) -> None:
  """Raises WeightValueError naming every planned tensor whose dtype is not floating point."""
  bad = sorted(
    {
      f"{src.key} ({checkpoint[src.key].dtype})"
      for sources in plan.values()
      for src in sources
      if not jnp.issubdtype(checkpoint[src.key].dtype, jnp.floating)
    }
  )
  if bad:
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    raise WeightValueError(
      f"parameters must be floating point, but {len(bad)} checkpoint tensors are not: "
      f"{', '.join(bad[:10])}{more}"
    )


def _check_finite(host: np.ndarray, sources, index) -> None:
  """Raises WeightValueError naming the source tensors of a slice that hold NaN or Inf."""
  if np.isfinite(host).all():
    return
  if sources[0].layer is None:
    bad = [(sources[0].key, host)]
  else:  # one piece per layer that `index` selects, in order
    bad = zip(sources[(tuple(index) or (slice(None),))[0]], host, strict=True)
  names = [
    f"{src.key} ({np.size(x) - np.isfinite(x).sum()} of {np.size(x)} values in this slice)"
    for src, x in bad
    if not np.isfinite(x).all()
  ]
  raise WeightValueError(
    f"non-finite values (NaN or Inf, after the cast to {host.dtype}) in checkpoint tensors "
    f"{', '.join(names)}; pass --allow_nonfinite to convert them anyway"
  )


def build_param(
  checkpoint: reader.Checkpoint, sources, spec, shard, allow_nonfinite: bool = False
) -> jax.Array:
  """One parameter as a jax.Array in `shard`, reading only the addressable devices' slices.

  Like `jax.make_array_from_callback`, but each distinct slice is read once (replicas share it)
  and handed to its devices before the next is read, so the host holds one slice at a time
  (make_array_from_callback gathers every local slice on the host before any transfer).
  """
  groups: dict[tuple, tuple[tuple, list]] = {}
  for device, index in shard.addressable_devices_indices_map(spec.shape).items():
    key = tuple((s.start, s.stop, s.step) for s in index)
    groups.setdefault(key, (index, []))[1].append(device)
  pieces = []
  for index, devices in groups.values():
    host = keymap.read_param(checkpoint, sources, spec, index, done=checkpoint.release)
    if not allow_nonfinite:
      _check_finite(host, sources, index)
    pieces += [jax.device_put(host, d) for d in devices]
    jax.block_until_ready(pieces[-len(devices) :])
    del host
  return jax.make_array_from_single_device_arrays(spec.shape, shard, pieces)


def iter_params(
  checkpoint: reader.Checkpoint, plan, shapes, shardings, allow_nonfinite: bool = False
) -> Iterator:
  """Yields ('/'-joined path, jax.Array) for every parameter, in tree order, one at a time."""
  flat_shapes, flat_shardings = _flat(shapes), _flat(shardings)
  for path, sources in plan.items():
    yield (
      path,
      build_param(checkpoint, sources, flat_shapes[path], flat_shardings[path], allow_nonfinite),
    )


def prepare(component: formats.Component, config, mesh, rules, config_hint: str = ""):
  """(checkpoint, plan, shapes, shardings, naming) of a component; checks keys, shapes and
  dtypes before anything is read."""
  checkpoint = reader.Checkpoint(component.files)
  naming, key_rules, ignore = formats.key_map(component.kind, list(checkpoint), config)
  shapes, specs = formats.abstract(component.kind, config)
  plan = keymap.plan(
    {k: v.shape for k, v in checkpoint.items()},
    key_rules,
    shapes,
    ignore=ignore,
    config_hint=config_hint,
  )
  check_dtypes(checkpoint, plan)
  return checkpoint, plan, shapes, param_shardings(specs, mesh, rules), naming


def load_component(component: formats.Component, config, mesh, rules, config_hint: str = ""):
  """The whole param tree of a component, sharded on `mesh` (no orbax round trip)."""
  checkpoint, plan, shapes, shardings, _ = prepare(component, config, mesh, rules, config_hint)
  return unflatten(dict(iter_params(checkpoint, plan, shapes, shardings)))
