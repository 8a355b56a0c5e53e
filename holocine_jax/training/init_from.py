"""Starting a training run from weights: `train.init_from` (a converted folder or a training
workdir, `WORKDIR@STEP` for one step) and `train.init_expert` (which stored expert).

The expert being trained starts from: `train.init_expert` if set, else `train.expert` (high /
low); with `train.expert=all` a folder holding two experts needs `train.init_expert`. The stored
architecture (formats.DIT_SHAPE_FIELDS and scan_layers) must equal the config's; attention,
numerics and memory settings may differ. Params are restored straight into the training
shardings and dtype (weights/store.py); the optimizer state starts fresh at step 0.

`workdir/init_from.json` records where a run started (`init_from`: the absolute path[@step] or ""
for a random init, `expert`, `kind`, `step`) and the `fingerprint` (store.fingerprint) of the
params it started from (the frozen base for LoRA). A resumed run never reads init_from again,
except to rebuild a LoRA run's base, whose fingerprint must then match; a config whose init_from
differs from the record is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import os

import jax

from holocine_jax.files import write_json
from holocine_jax.model.config import DiTConfig
from holocine_jax.training import state
from holocine_jax.weights import formats, store

RECORD = store.INIT_RECORD
EXPERT_CHOICES = ("", "high", "low")
# the stored fields that fix the param tree: they must equal the config's
ARCHITECTURE = (*formats.DIT_SHAPE_FIELDS, "scan_layers")


@dataclasses.dataclass(frozen=True)
class Init:
  """The weights a run starts from: one stored DiT of a converted folder or a workdir."""

  spec: str  # absolute path, with "@step" when one was asked for
  source: store.Source
  names: tuple[str, ...]  # the stored DiT read (one of source.experts)

  @property
  def expert(self) -> str:
    return "+".join(self.names)

  def describe(self) -> str:
    return f"{self.spec} (expert {self.expert})"


def _expert(config, source: store.Source) -> tuple[str, ...]:
  """The stored DiT the expert being trained starts from."""
  t = config.train
  want = t.init_expert or (t.expert if t.expert != "all" else "")
  if not want:
    if len(source.experts) > 1:
      raise ValueError(
        f"train.init_from {source.path} holds the experts {[n[0] for n in source.experts]}: "
        "with train.expert=all set train.init_expert=high or low"
      )
    return source.experts[0]
  for names in source.experts:
    if want in names:
      return names
  have = sorted(n for names in source.experts for n in names)
  raise ValueError(f"train.init_from {source.path} has no {want!r} expert; it has {have}")


def check_config(train) -> list[str]:
  """Problems (naming the field) with `train.init_from` / `train.init_expert` as written."""
  if train.init_expert not in EXPERT_CHOICES:
    return [f"train.init_expert must be one of {EXPERT_CHOICES}, got {train.init_expert!r}"]
  if train.init_expert and not train.init_from:
    return [f"train.init_expert={train.init_expert!r} names an expert of train.init_from: set it"]
  return []


def check_architecture(what: str, stored: DiTConfig, model: DiTConfig) -> None:
  """One ValueError naming every ARCHITECTURE field in which `stored` differs from `model`."""
  differ = [
    f"model.{f}={getattr(stored, f)} (config: {getattr(model, f)})"
    for f in ARCHITECTURE
    if getattr(stored, f) != getattr(model, f)
  ]
  if differ:
    raise ValueError(
      f"train.init_from {what} has another architecture: {', '.join(differ)}; set the config's "
      "model fields to the stored ones (attention settings may differ)"
    )


def resolve(config, workdir, model: DiTConfig) -> Init | None:
  """The checked init source of `config.train` (None: random init); raises ValueError (nothing
  written) for a bad spec, an expert it lacks, another architecture, LoRA without a base, or an
  init_from that differs from the one `workdir` started from (whose step it then reads)."""
  spec = config.train.init_from
  record = store.init_record(os.fspath(workdir))
  init = None
  if spec:
    path, step = store.parse_init(spec)
    spec = path if step is None else f"{path}@{step}"
    if record is not None and record["init_from"] == spec:
      step = record["step"]  # a resumed run reads the step it started from, not a newer one
    source = store.source(path, step)
    init = Init(spec, source, _expert(config, source))
    check_architecture(init.describe(), source.config, model)
  elif model.lora_rank:
    raise ValueError(
      f"model.lora_rank={model.lora_rank} trains adapters on a frozen base: set train.init_from "
      "to a converted folder or a training workdir"
    )
  if record is not None:
    was = (record["init_from"], record["expert"])
    now = (init.spec, init.expert) if init else ("", "")
    if was != now:
      raise ValueError(
        f"train.init_from differs from the one workdir {workdir} started from: it started from "
        f"{_describe(*was)}, the config says {_describe(*now)}; use a new workdir or restore "
        "train.init_from / train.init_expert"
      )
  return init


def _describe(spec: str, expert: str) -> str:
  return f"{spec} (expert {expert})" if spec else "a random init (train.init_from='')"


def write_record(workdir, init: Init | None, fingerprint: str) -> None:
  """Writes `workdir/init_from.json` (call on process 0)."""
  record = dict(
    init_from=init.spec if init else "",
    expert=init.expert if init else "",
    kind=init.source.kind if init else "random",
    step=init.source.step if init else None,
    fingerprint=fingerprint,
  )
  os.makedirs(os.fspath(workdir), exist_ok=True)
  write_json(os.path.join(os.fspath(workdir), RECORD), record)


def lora_base(init: Init, model: DiTConfig, mesh, rules, workdir):
  """(frozen base {'params': ...}, its shardings, fingerprint) of a LoRA run from `init`; on a
  resume the fingerprint must equal the one `workdir` recorded."""
  record = store.init_record(os.fspath(workdir))
  expect = record["fingerprint"] if record else None
  base, fingerprint = store.lora_base(init.source, init.names, model, mesh, rules, expect)
  return base, jax.tree.map(lambda x: x.sharding, base), fingerprint


def restore(init: Init, model: DiTConfig, mesh, rules):
  """{'params': the stored DiT of `init`} in `model`'s layout, param_dtype and shardings."""
  return {"params": init.source.load(init.names, mesh, rules, config=model)}


def start(init: Init | None, model, tx, mesh, rules, key, shardings, workdir, base_fingerprint=""):
  """The step-0 state of a new run, recorded in `workdir/init_from.json`: `init`'s params with a
  fresh optimizer state, or a random init (of the adapters, with a LoRA `base_fingerprint`)."""
  if init is None or base_fingerprint:
    fresh, _ = state.create(model, tx, mesh, rules, key)
  else:
    fresh = state.from_params(restore(init, model.config, mesh, rules), tx, shardings)
  fingerprint = base_fingerprint or store.fingerprint(fresh.params)
  if jax.process_index() == 0:
    write_record(workdir, init, fingerprint)
  return fresh
