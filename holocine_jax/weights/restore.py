"""DiT params from a training workdir's orbax checkpoints: params only (no optimizer state, no
data iterator), restored straight into the shardings and param dtype asked for.

The workdir is what `python -m holocine_jax.train` writes: `checkpoints/<step>/state` (the
TrainState: step, params, opt_state) and `config.json`. Only the `params` subtree is read
(orbax partial restore); the other arrays are never loaded.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from holocine_jax import config_file
from holocine_jax.model.config import DiTConfig
from holocine_jax.weights import formats, loader

CONFIG = "config.json"


def is_workdir(directory: str) -> bool:
  return os.path.isdir(os.path.join(directory, "checkpoints"))


def _manager(workdir: str) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  return ocp.CheckpointManager(
    os.path.join(workdir, "checkpoints"),
    options=options,
    item_handlers=dict(state=ocp.PyTreeCheckpointHandler()),
  )


def resolve_step(workdir: str, step: int | None = None) -> int:
  """`step` if the workdir holds it, else its newest step when `step` is None; names the steps."""
  steps = sorted(_manager(workdir).all_steps())
  if not steps:
    raise FileNotFoundError(f"training workdir {workdir} has no finished checkpoint yet")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ValueError(f"training workdir {workdir} has no step {step}; it has steps {steps}")
  return step


def config(workdir: str, spec: str | None = None) -> ml_collections.ConfigDict:
  """The config a workdir was trained with: `spec` (a config file[:arg]) or its config.json."""
  if spec:
    return config_file.load(spec)
  path = os.path.join(workdir, CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"training workdir {workdir} has no {CONFIG}; pass the config it was trained with"
    )
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def params(workdir: str, step: int, model: DiTConfig, mesh, rules):
  """The DiT param tree saved at `step`, cast to `model.param_dtype` as it is read and placed
  in its logical shardings on `mesh`."""
  shapes, specs = formats.abstract("dit", model)
  shardings = loader.param_shardings(specs, mesh, rules)
  target = jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
  )
  restore_args = jax.tree.map(
    lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, dtype=t.dtype), target
  )
  args = ocp.args.PyTreeRestore(
    item=dict(params=dict(params=target)),
    restore_args=dict(params=dict(params=restore_args)),
    partial_restore=True,
  )
  restored = _manager(workdir).restore(step, args=ocp.args.Composite(state=args))
  return restored.state["params"]["params"]
