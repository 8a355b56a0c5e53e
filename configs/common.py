"""Pieces every config shares: the mesh block and the logical sharding rules."""

import ml_collections

from holocine_jax import sharding


def mesh(**sizes) -> ml_collections.ConfigDict:
  """Mesh sizes over (data, fsdp, context, tensor); -1 takes the remaining devices."""
  base = dict(data=1, fsdp=-1, context=1, tensor=1)
  base.update(sizes)
  return ml_collections.ConfigDict(base)


def logical_rules():
  return [list(rule) for rule in sharding.DEFAULT_LOGICAL_RULES]


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'key=value,key2=value2' overrides on typed defaults (big_vision's arg convention)."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
    kind = type(defaults[key])
    out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
  return out


def holocine_switches(a: ml_collections.ConfigDict) -> dict:
  """The model fields every config takes from its args: HoloCine attention and remat."""
  return dict(
    self_attention=a.attention,
    attention_impl=a.impl,
    window_cross_attention=a.window,
    remat_policy=a.remat,
  )

