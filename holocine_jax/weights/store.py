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
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.experimental import v1 as ocp_v1

from holocine_jax import config_file
from holocine_jax.model import lora
from holocine_jax.model.config import DiTConfig
from holocine_jax.weights import formats, loader

RECORD = "convert.json"  # a converted folder's record
CONFIG = "config.json"  # a training workdir's config
INIT_RECORD = "init_from.json"  # where a training workdir started (training/init_from.py)
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


def load(directory: str, component: str, mesh, rules, config=None):
  """Restores a converted component ('high', 'low', 'text_encoder', 'vae') directly into its
  shardings on `mesh` under the logical `rules`; returns the param tree. `config` (default: the
  one it was converted for) gives the layout and param_dtype to read into (cast as read)."""
  kind, stored = component_config(directory, component)
  tree = target(kind, config or stored, mesh, rules)
  return ocp_v1.load_pytree(os.path.join(directory, component), tree)


def _words(x):
  """x's bits as uint32 values, element by element (floats bitcast, integers widened)."""
  if jnp.issubdtype(x.dtype, jnp.floating):
    x = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
  return x.astype(jnp.uint32)


@jax.jit
def _checksums(tree):
  """Two position-weighted uint32 sums of every leaf's bits: exact (integer sums wrap the same
  way in any order), so they do not depend on the sharding."""

  def sums(x):
    words = _words(x)
    index = jnp.zeros(x.shape, jnp.uint32)
    for axis, stride in enumerate(np.cumprod((1, *x.shape[::-1]))[-2::-1]):
      index += jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2**32)
    mixed = (words ^ (index * jnp.uint32(0x9E3779B9))) + index
    return jnp.stack(
      [jnp.sum(mixed, dtype=jnp.uint32), jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)]
    )

  return jax.tree.map(sums, tree)


def fingerprint(tree) -> str:
  """A content fingerprint of an array tree (paths, shapes, dtypes and every bit), computed on
  the devices where the arrays are: only two words per leaf come to the host."""
  sums = jax.tree.leaves(jax.device_get(_checksums(tree)))
  paths = jax.tree_util.tree_leaves_with_path(tree)
  leaves = [
    (jax.tree_util.keystr(path), x.shape, str(x.dtype), [int(v) for v in s])
    for (path, x), s in zip(paths, sums, strict=True)
  ]
  return hashlib.sha256(json.dumps(leaves).encode()).hexdigest()[:16]


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
  """The DiT param tree saved at `step` (a LoRA run's: its adapters), cast to `model.param_dtype`
  as it is read and placed in its logical shardings on `mesh`."""
  tree = target("dit", model, mesh, rules)
  if model.lora_rank:
    tree = lora.split(tree)[1]
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


def parse_init(spec: str) -> tuple[str, int | None]:
  """`train.init_from` 'DIR' or 'WORKDIR@STEP' -> (absolute DIR, step or None)."""
  path, at, step = spec.rpartition("@") if "@" in os.path.basename(spec) else (spec, "", "")
  if at and not step.isdigit():
    raise ValueError(f"train.init_from {spec!r}: the step after '@' must be an integer")
  return os.path.abspath(path.rstrip("/")), int(step) if at else None


def init_record(workdir: str) -> dict | None:
  """A training workdir's `init_from.json` (training/init_from.py), None if it has none."""
  path = os.path.join(workdir, INIT_RECORD)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _reuse(model: DiTConfig) -> tuple[int, ...]:
  """Donate the input tree when a bf16 base's buffers can hold the output (a quantized base's
  kernels change size: donating them only warns)."""
  return (0,) if model.lora_base == "bf16" else ()


def lora_base(source: Source, names: tuple[str, ...], model: DiTConfig, mesh, rules, expect=None):
  """(a LoRA run's frozen base {'params': ...}, its fingerprint): the DiT serving `names` of
  `source` read at bfloat16 straight into its shardings, then quantized as `model` declares
  (lora_base); the same on every rebuild. ValueError when it differs from `expect`, the
  fingerprint of the base the adapters were trained on."""
  plain = dataclasses.replace(lora.plain_config(model), param_dtype="bfloat16")
  params = source.load(names, mesh, rules, config=plain)
  base_target = lora.split(target("dit", model, mesh, rules))[0]
  shardings = jax.tree.map(lambda t: t.sharding, base_target)
  quantize = jax.jit(
    lambda p: lora.quantize_base(p, model), out_shardings=shardings, donate_argnums=_reuse(model)
  )
  base = {"params": quantize(params)}
  found = fingerprint(base)
  if expect is not None and found != expect:
    raise ValueError(
      f"the LoRA base {source.path} (expert {'+'.join(names)}) now holds other weights "
      f"(fingerprint {found}) than the adapters were trained on ({expect}): restore those "
      "weights or start a new workdir"
    )
  return base, found


def _recorded_base(workdir: str, model: DiTConfig, mesh, rules):
  """The frozen base a LoRA workdir was trained on, rebuilt from its init_from.json and checked
  against the fingerprint recorded there."""
  record = init_record(workdir)
  if not record or not record["init_from"]:
    raise FileNotFoundError(f"LoRA workdir {workdir} has no {INIT_RECORD} naming its base")
  path, _ = parse_init(record["init_from"])
  base_source = source(path, record["step"])  # the step read then, not a newer one
  names = next(n for n in base_source.experts if "+".join(n) == record["expert"])
  return lora_base(base_source, names, model, mesh, rules, record["fingerprint"])[0]


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
  # a LoRA workdir's model as trained (`config` is then its plain, merged model in bfloat16):
  # `load` rebuilds the base from the workdir's init_from.json and merges the adapters in
  lora: DiTConfig | None = None

  def load(self, names: tuple[str, ...], mesh, rules, config: DiTConfig | None = None):
    """The params of the DiT serving `names` (one of `experts`), in their shardings on `mesh`;
    `config` (default: as stored or trained) gives the layout and param_dtype to read into."""
    if self.lora is not None:
      return self._merged(mesh, rules, config or self.config)
    if self.kind == "training":
      return workdir_params(self.path, self.step, config or self.config, mesh, rules)
    return load(self.path, names[0], mesh, rules, config)

  def _merged(self, mesh, rules, config: DiTConfig):
    """Base + adapters of a LoRA workdir as one plain tree in `config`'s param_dtype."""
    base = _recorded_base(self.path, self.lora, mesh, rules)
    adapters = workdir_params(self.path, self.step, self.lora, mesh, rules)
    plain = target("dit", lora.plain_config(self.lora), mesh, rules)
    dtype = config.base_dtype

    def merge(base, adapters):
      merged = lora.merge_adapters(base, adapters, self.lora)
      return jax.tree.map(lambda x: x.astype(dtype), merged)

    shardings = jax.tree.map(lambda t: t.sharding, plain)
    donate = _reuse(self.lora)
    return jax.jit(merge, out_shardings=shardings, donate_argnums=donate)(base["params"], adapters)


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
    if model.lora_rank:
      merged = dataclasses.replace(lora.plain_config(model), param_dtype="bfloat16")
      return Source(checkpoint, "training", merged, step, (names,), lora=model)
    return Source(checkpoint, "training", model, step, (names,))
  raise FileNotFoundError(
    f"--checkpoint {checkpoint} is neither a converted folder ({RECORD}) nor a training "
    "workdir (checkpoints/)"
  )
