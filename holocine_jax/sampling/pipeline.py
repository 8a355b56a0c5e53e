"""Holistic denoising: one pass over a whole multi-shot scene, CFG, and the two-expert switch.

Wan2.2 / HoloCine run the high-noise expert while t >= boundary * 1000 and the low-noise expert
after; each step evaluates the positive (windowed) and negative (unwindowed) prompts in one
batch and mixes them as neg + g * (pos - neg), with a guidance scale per expert. The loop runs in
`lax.fori_loop` inside one jitted stage function (compiled once per shape), called once per
expert. Experts are param trees (resident) or zero-argument loaders called right before their
stage, so only one expert is in device memory at a time (swapped).
Legend: B scenes, F/H/W latent grid, C latent channels, T text tokens, E text dim.
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

  @classmethod
  def from_config(cls, sampler_config) -> SamplerConfig:
    return cls(**dict(sampler_config))


def expert_split(schedule: schedulers.Schedule, boundary: float) -> int:
  """Number of leading steps the high-noise expert takes (timesteps decrease)."""
  t = np.asarray(schedule.timesteps_N)
  return int(np.sum(t >= boundary * schedulers.NUM_TRAIN_TIMESTEPS))


class Sampler:
  """Denoises noise [B, F, H, W, C] given contexts [2B, T, E] (positive rows, then negative)."""

  def __init__(self, model: WanDiT, config: SamplerConfig):
    self.model, self.config = model, config
    self.schedule = schedulers.make(config.scheduler, config.num_steps, config.shift)
    self.split = expert_split(self.schedule, config.boundary)
    self.stage = jax.jit(self._stage)

  def _stage(self, params, schedule, state, context_2BxTxE, shots, start, stop, guidance):
    """Steps [start, stop) with one expert."""

    def body(i, state):
      x_2BxFxHxWxC = jnp.concatenate([state[0], state[0]], axis=0)
      t_2B = jnp.broadcast_to(schedule.timesteps_N[i], (x_2BxFxHxWxC.shape[0],))
      v_2B = self.model.apply(params, x_2BxFxHxWxC, t_2B, context_2BxTxE, shots)
      v_pos, v_neg = jnp.split(v_2B.astype(jnp.float32), 2, axis=0)
      return schedule.step(state, i, v_neg + guidance * (v_pos - v_neg))

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
        state = self.stage(
          params, sch, state, context_2BxTxE, shots, start, stop, jnp.float32(guidance)
        )
        del params  # a loaded expert is freed before the next one loads
    return state[0]
