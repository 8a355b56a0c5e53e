"""Holistic denoising: one pass over a whole multi-shot scene, CFG, and the two-expert switch.

Wan2.2 / HoloCine run the high-noise expert while t >= boundary * 1000 and the low-noise expert
after; each step evaluates the positive (windowed) and negative (unwindowed) prompts in one
batch and mixes them as neg + g * (pos - neg), with a guidance scale per expert. A guidance of 1
(step-distilled experts) is the positive prediction alone: that stage runs the positive rows only
(half the DiT rows, no mix). The loop runs in `lax.fori_loop` inside one jitted stage function
(compiled once per shape: with and without CFG rows), called once per expert. Experts are param
trees (resident) or zero-argument loaders called right before their stage, so only one expert is
in device memory at a time (swapped).
Legend: B scenes, R DiT rows (2B with CFG, else B), F/H/W latent grid, C latent channels,
T text tokens, E text dim.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from holocine_jax.layout import ShotBatch
from holocine_jax.model.dit import WanDiT
from holocine_jax.sampling import schedulers


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """HoloCine's defaults: Euler, shift 5, 50 steps, CFG 5 for both experts."""

  scheduler: str = "euler"
  num_steps: int = 50
  shift: float = 5.0
  boundary: float = 0.875  # high-noise expert while t >= boundary * 1000
  guidance_high: float = 5.0
  guidance_low: float = 5.0
  timesteps: tuple[float, ...] = ()  # explicit unshifted Euler timesteps; (): evenly spaced

  @classmethod
  def from_config(cls, sampler_config) -> SamplerConfig:
    fields = dict(sampler_config)
    fields["timesteps"] = tuple(fields.get("timesteps", ()))  # hashable: samplers are cached
    return cls(**fields)

  @property
  def rows_per_scene(self) -> int:
    """DiT rows per scene of the widest stage: 2 when an expert runs CFG, else 1."""
    return 2 if uses_cfg(self.guidance_high) or uses_cfg(self.guidance_low) else 1


def uses_cfg(guidance: float) -> bool:
  """Whether a stage evaluates the negative prompt: at guidance 1 the mix is the positive."""
  return guidance != 1.0


def expert_split(schedule: schedulers.Schedule, boundary: float) -> int:
  """Number of leading steps the high-noise expert takes (timesteps decrease)."""
  t = np.asarray(schedule.timesteps_N)
  return int(np.sum(t >= boundary * schedulers.NUM_TRAIN_TIMESTEPS))


class Sampler:
  """Denoises noise [B, F, H, W, C] given contexts [2B, T, E] (positive rows, then negative;
  a stage at guidance 1 uses the positive rows only)."""

  def __init__(self, model: WanDiT, config: SamplerConfig):
    self.model, self.config = model, config
    self.schedule = schedulers.make(
      config.scheduler, config.num_steps, config.shift, config.timesteps
    )
    self.split = expert_split(self.schedule, config.boundary)
    self.stage = jax.jit(self._stage)

  def _stage(self, params, schedule, state, context_RxTxE, shots, start, stop, guidance):
    """Steps [start, stop) with one expert: CFG when the context holds 2B rows (positive, then
    negative), the positive prediction alone when it holds the B positive rows."""
    cfg = context_RxTxE.shape[0] == 2 * state[0].shape[0]

    def body(i, state):
      x_RxFxHxWxC = jnp.concatenate([state[0], state[0]], axis=0) if cfg else state[0]
      t_R = jnp.broadcast_to(schedule.timesteps_N[i], (x_RxFxHxWxC.shape[0],))
      v_R = self.model.apply(params, x_RxFxHxWxC, t_R, context_RxTxE, shots).astype(jnp.float32)
      if cfg:
        v_pos, v_neg = jnp.split(v_R, 2, axis=0)
        v_R = v_neg + guidance * (v_pos - v_neg)
      return schedule.step(state, i, v_R)

    return jax.lax.fori_loop(start, stop, body, state)

  def __call__(
    self, params_high, params_low, noise_BxFxHxWxC, context_2BxTxE, shots: ShotBatch | None = None
  ):
    """Final latents [B, F, H, W, C] (fp32). Each expert is params or a loader of params;
    `params_low` None: the high expert for every step."""
    b = noise_BxFxHxWxC.shape[0]
    if context_2BxTxE.shape[0] != 2 * b:
      raise ValueError(
        f"context must stack {b} positive then {b} negative rows, got {context_2BxTxE.shape[0]}"
      )
    c, sch = self.config, self.schedule
    state = sch.init(jnp.asarray(noise_BxFxHxWxC, jnp.float32))
    stages = [
      (params_high, 0, self.split, c.guidance_high),
      (
        params_high if params_low is None else params_low,
        self.split,
        sch.num_steps,
        c.guidance_low,
      ),
    ]
    for source, start, stop, guidance in stages:
      if stop > start:
        params = source() if callable(source) else source
        context, stage_shots = (context_2BxTxE, shots)
        if not uses_cfg(guidance):  # the positive rows only
          context, stage_shots = jax.tree.map(lambda x: x[:b], (context, stage_shots))
        state = self.stage(
          params, sch, state, context, stage_shots, start, stop, jnp.float32(guidance)
        )
        del params  # a loaded expert is freed before the next one loads
    return state[0]
