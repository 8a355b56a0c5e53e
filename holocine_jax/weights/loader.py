"""Streaming loader: PyTorch checkpoint files -> params placed straight into their shardings.

Each parameter is assembled shard by shard under its NamedSharding: each addressable device's
index is mapped back through the key map's transform to the file-backed source tensor(s), so a
host reads only the slices its own devices hold (a scanned parameter reads only the layers in
its index). After a parameter is built its source pages are released, so host memory holds about
one parameter's shard at a time (plus what the devices keep, which on TPU is HBM).
"""

from __future__ import annotations

from collections.abc import Iterator

import flax.linen as nn
import jax
from flax import traverse_util

from holocine_jax import sharding
from holocine_jax.weights import formats, keymap, reader


def param_shardings(specs, mesh, rules):
  """NamedShardings for a tree of logical PartitionSpecs under the config's rules table."""
  return nn.logical_to_mesh_sharding(specs, mesh, sharding.logical_rules(rules))


def _flat(tree) -> dict[str, object]:
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def unflatten(flat: dict):
  """{'a/b': x} -> {'a': {'b': x}}."""
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def build_param(checkpoint: reader.Checkpoint, sources, spec, shard) -> jax.Array:
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
    pieces += [jax.device_put(host, d) for d in devices]
    jax.block_until_ready(pieces[-len(devices) :])
    del host
  return jax.make_array_from_single_device_arrays(spec.shape, shard, pieces)


def iter_params(checkpoint: reader.Checkpoint, plan, shapes, shardings) -> Iterator:
  """Yields ('/'-joined path, jax.Array) for every parameter, in tree order, one at a time."""
  flat_shapes, flat_shardings = _flat(shapes), _flat(shardings)
  for path, sources in plan.items():
    yield path, build_param(checkpoint, sources, flat_shapes[path], flat_shardings[path])


def prepare(component: formats.Component, config, mesh, rules, config_hint: str = ""):
  """(checkpoint, plan, shapes, shardings, naming) of a component; checks keys and shapes
  before anything is read."""
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
  return checkpoint, plan, shapes, param_shardings(specs, mesh, rules), naming


def load_component(component: formats.Component, config, mesh, rules, config_hint: str = ""):
  """The whole param tree of a component, sharded on `mesh` (no orbax round trip)."""
  checkpoint, plan, shapes, shardings, _ = prepare(component, config, mesh, rules, config_hint)
  return unflatten(dict(iter_params(checkpoint, plan, shapes, shardings)))
