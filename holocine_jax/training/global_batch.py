"""Host batches -> global jax.Arrays: logical shardings of the inputs, which batch rows a host
loads, and assembly with `jax.make_array_from_single_device_arrays`.

A host loads exactly the global-batch rows that its addressable devices hold (rows replicated
across hosts, e.g. when `context` spans hosts, are loaded by each of them), so any mesh layout
works and hosts sharing no batch rows see disjoint data.
Legend: B batch, F latent frames, H/W latent height/width, C channels, T text, E text dim,
L video tokens.
"""

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from holocine_jax import sharding

MODEL_INPUTS = ("latents", "context", "shots", "frame_mask")


def logical_specs(batch):
  """Logical PartitionSpecs for a batch {latents, context, shots, frame_mask}: batch, and tokens
  on context."""
  shots = batch["shots"]
  return dict(
    latents=P("act_batch", "act_frames", "act_height", "act_width", "act_channels"),
    context=P("act_batch", "act_text", "act_embed"),
    frame_mask=P("act_batch", "act_frames"),
    shots=shots.replace(
      shot_id_BxL=P("act_batch", "act_length"),
      shot_bounds_BxNx2=P("act_batch"),
      summary_idx_BxG=P("act_batch"),
      summary_valid_BxG=P("act_batch"),
      text_allow_BxNxT=None if shots.text_allow_BxNxT is None else P("act_batch"),
    ),
  )


def shardings(batch, mesh, rules):
  """NamedShardings of a (host or global) batch's model inputs on `mesh`."""
  specs = logical_specs(batch)
  return jax.tree.map(
    lambda spec: NamedSharding(mesh, nn.logical_to_mesh_axes(spec, sharding.logical_rules(rules))),
    specs,
    is_leaf=lambda x: isinstance(x, P),
  )


def host_rows(mesh, rules, global_batch: int) -> tuple[int, int]:
  """[lo, hi): the global-batch rows held by this process's devices (must be contiguous)."""
  spec = nn.logical_to_mesh_axes(P("act_batch"), sharding.logical_rules(rules))
  index_map = NamedSharding(mesh, spec).addressable_devices_indices_map((global_batch,))
  rows = sorted({sl[0].indices(global_batch)[:2] for sl in index_map.values()})
  lo, hi = rows[0][0], rows[-1][1]
  covered = sum(b - a for a, b in rows)
  if covered != hi - lo:
    raise ValueError(
      f"this process's devices hold batch rows {rows}, not one contiguous range; order the "
      "mesh so that each host's devices share consecutive batch rows"
    )
  return lo, hi


def to_global(host_batch, batch_shardings, global_batch: int, rows: tuple[int, int]):
  """Assembles a host batch (rows [lo, hi) of the global batch) into global jax.Arrays."""
  lo, hi = rows

  def put(x, s):
    x = np.asarray(x)
    if x.shape[0] != hi - lo:
      raise ValueError(f"host batch has {x.shape[0]} rows, expected {hi - lo} (rows {rows})")
    shape = (global_batch, *x.shape[1:])
    arrays = []
    for device, index in s.addressable_devices_indices_map(shape).items():
      start, stop, _ = index[0].indices(global_batch)
      arrays.append(jax.device_put(x[(slice(start - lo, stop - lo), *index[1:])], device))
    return jax.make_array_from_single_device_arrays(shape, s, arrays)

  inputs = {k: host_batch[k] for k in MODEL_INPUTS}
  return jax.tree.map(put, inputs, batch_shardings)
