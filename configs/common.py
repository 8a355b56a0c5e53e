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


# Wan's standard negative prompt (HoloCine samples with it too).
WAN_NEGATIVE_PROMPT = (
  "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
  "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
  "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


def sampler(**overrides) -> ml_collections.ConfigDict:
  """HoloCine's sampler: flow Euler, shift 5, 50 steps, CFG 5 on both experts."""
  base = dict(
    scheduler="euler",
    num_steps=50,
    shift=5.0,
    boundary=0.875,
    guidance_high=5.0,
    guidance_low=5.0,
  )
  base.update(overrides)
  return ml_collections.ConfigDict(base)
