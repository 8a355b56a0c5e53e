"""What a checkpoint directory holds, and restoring it straight into shardings.

Two kinds of directory hold weights. A converted folder (`python -m holocine_jax.convert`)
holds one orbax checkpoint per component (`high`, `low` DiT experts, `text_encoder`, `vae`) and
`convert.json` recording each one's model kind and config. A training workdir
(`python -m holocine_jax.train`) holds `checkpoints/<step>/state` (the TrainState: step, params,
opt_state) and `config.json`; only the DiT params are read from it (orbax partial restore), cast
to the param dtype asked for. `source` tells the two apart for every reader of `--checkpoint`
(sampling, export); `load` restores one converted component.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.experimental import v1 as ocp_v1

from holocine_jax import config_file
from holocine_jax.model.config import DiTConfig
from holocine_jax.weights import formats, loader

RECORD = "convert.json"  # a converted folder's record
CONFIG = "config.json"  # a training workdir's config
EXPERTS = ("high", "low")  # the DiT components of a converted folder


def info(directory: str) -> dict:
  """The conversion record (`convert.json`) of a converted directory."""
  path = os.path.join(directory, RECORD)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{directory} is not a converted checkpoint (no {RECORD})")
  with open(path) as f:
    return json.load(f)


def component_config(directory: str, component: str):
  """(model kind, config dataclass) the component was converted for."""
  components = info(directory)["components"]
  if component not in components:
    raise KeyError(f"{directory} has no component {component!r}; it has {sorted(components)}")
  entry = components[component]
  return entry["kind"], formats.config_from_dict(entry["kind"], entry["config"])


def target(kind: str, config, mesh, rules):
  """ShapeDtypeStructs of a component's params, carrying their NamedShardings on `mesh` under
  the logical `rules`: what `load` and `workdir_params` restore into; allocates nothing."""
  shapes, specs = formats.abstract(kind, config)
  shardings = loader.param_shardings(specs, mesh, rules)
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
  )


def load(directory: str, component: str, mesh, rules):
  """Restores a converted component ('high', 'low', 'text_encoder', 'vae') directly into its
  shardings on `mesh` under the logical `rules`; returns the param tree."""
  kind, config = component_config(directory, component)
  return ocp_v1.load_pytree(os.path.join(directory, component), target(kind, config, mesh, rules))


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


def workdir_config(workdir: str, spec: str | None = None) -> ml_collections.ConfigDict:
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


def workdir_params(workdir: str, step: int, model: DiTConfig, mesh, rules):
  """The DiT param tree saved at `step`, cast to `model.param_dtype` as it is read and placed
  in its logical shardings on `mesh`."""
  tree = target("dit", model, mesh, rules)
  restore_args = jax.tree.map(
    lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, dtype=t.dtype), tree
  )
  args = ocp.args.PyTreeRestore(
    item=dict(params=dict(params=tree)),
    restore_args=dict(params=dict(params=restore_args)),
    partial_restore=True,
  )
  restored = _manager(workdir).restore(step, args=ocp.args.Composite(state=args))
  return restored.state["params"]["params"]


@dataclasses.dataclass(frozen=True)
class Source:
  """The DiT experts `--checkpoint` holds; nothing is loaded until `load`."""

  path: str
  kind: str  # "converted" | "training"
  # the model the experts restore into: a converted folder's first expert as converted (its
  # params keep their stored dtype), a workdir's as trained (read at this param_dtype)
  config: DiTConfig
  step: int | None  # the workdir step read; None for a converted folder
  # the expert names each stored DiT serves: (("high",), ("low",)) for a converted folder, one
  # group for a workdir (("high", "low") when trained with train.expert=all)
  experts: tuple[tuple[str, ...], ...]

  def load(self, names: tuple[str, ...], mesh, rules):
    """The params of the DiT serving `names` (one of `experts`), in their shardings on `mesh`."""
    if self.kind == "training":
      return workdir_params(self.path, self.step, self.config, mesh, rules)
    return load(self.path, names[0], mesh, rules)


def source(checkpoint: str, step: int | None = None, config: str | None = None) -> Source:
  """Reads what a converted folder or a training workdir (its newest step or `step`; its
  config.json or the config file `config`) holds; nothing is loaded yet."""
  if not os.path.isdir(checkpoint):
    raise FileNotFoundError(f"--checkpoint {checkpoint!r} does not exist")
  if os.path.isfile(os.path.join(checkpoint, RECORD)):
    if step is not None:
      raise ValueError(f"--step is for training workdirs; {checkpoint} is a converted folder")
    found = info(checkpoint)["components"]
    names = [n for n in EXPERTS if n in found]
    if not names:
      raise FileNotFoundError(
        f"{checkpoint} holds no DiT expert ({', '.join(EXPERTS)}); it has {sorted(found)}"
      )
    model = component_config(checkpoint, names[0])[1]
    return Source(checkpoint, "converted", model, None, tuple((n,) for n in names))
  if is_workdir(checkpoint):
    step = resolve_step(checkpoint, step)
    trained = workdir_config(checkpoint, config)
    expert = trained.train.get("expert", "all")
    names = EXPERTS if expert == "all" else (expert,)
    model = DiTConfig.from_config(trained.model)
    return Source(checkpoint, "training", model, step, (names,))
  raise FileNotFoundError(
    f"--checkpoint {checkpoint} is neither a converted folder ({RECORD}) nor a training "
    "workdir (checkpoints/)"
  )
