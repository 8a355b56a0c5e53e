"""Rectified-flow (flow-matching) loss with shifted timestep sampling and per-expert ranges.

x_s = (1 - s) x0 + s noise, the DiT predicts the velocity noise - x0 at timestep 1000 s. Training
draws u ~ U[0, 1) and uses the shifted s = shift u / (1 + (shift - 1) u), the schedule the sampler
walks. Wan2.2's two experts split the timesteps at boundary * 1000 (0.875: high-noise expert at
t >= 875); an expert trains only on its own range, by drawing u from the pre-image of that range.
Clips padded to a shape bucket are scored on their real frames only.
Legend: B batch, F latent frames, H/W latent height/width, C channels.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from holocine_jax import timesteps

EXPERTS = ("all", "high", "low")


@dataclasses.dataclass(frozen=True)
class FlowMatching:
  """Timestep distribution of one training run: shift and the expert's sigma range [lo, hi)."""

  shift: float = 5.0
  sigma_lo: float = 0.0
  sigma_hi: float = 1.0

  def __post_init__(self):
    if not 0.0 <= self.sigma_lo < self.sigma_hi <= 1.0:
      raise ValueError(
        f"sigma range must satisfy 0 <= lo < hi <= 1, got {self.sigma_lo, self.sigma_hi}"
      )
    if self.shift <= 0:
      raise ValueError(f"timestep shift must be > 0, got {self.shift}")

  @classmethod
  def from_config(cls, train) -> "FlowMatching":
    """expert 'high': t >= boundary*1000; 'low': t < boundary*1000; 'all': every t."""
    if train.expert not in EXPERTS:
      raise ValueError(f"train.expert must be one of {EXPERTS}, got {train.expert!r}")
    lo, hi = {"all": (0.0, 1.0), "high": (train.boundary, 1.0), "low": (0.0, train.boundary)}[
      train.expert
    ]
    return cls(train.timestep_shift, lo, hi)

  def sample_sigma(self, key, batch: int):
    """[B] shifted sigmas in [lo, hi), drawn as shift(u) with u uniform on the pre-image."""
    u_lo = timesteps.unshift(self.sigma_lo, self.shift)
    u_hi = timesteps.unshift(self.sigma_hi, self.shift)
    u_B = jax.random.uniform(key, (batch,), jnp.float32, u_lo, u_hi)
    return jnp.clip(timesteps.shift(u_B, self.shift), self.sigma_lo, self.sigma_hi)


def frame_noise(key, shape):
  """Standard normal noise [B, F, ...] drawn frame by frame (key folded with the frame index), so
  a frame's noise does not depend on how many frames follow it (a clip padded to a bucket sees
  the noise of the clip alone)."""
  b, f, *rest = shape
  noise_FxBxHxWxC = jax.vmap(
    lambda i: jax.random.normal(jax.random.fold_in(key, i), (b, *rest), jnp.float32)
  )(jnp.arange(f))
  return jnp.moveaxis(noise_FxBxHxWxC, 0, 1)


def draw(key, shape, fm: FlowMatching):
  """(sigmas [B], noise [B, F, H, W, C]) of one step for latents of `shape`: drawn for the whole
  batch, so that splitting it into microbatches changes nothing."""
  key_s, key_n = jax.random.split(key)
  return fm.sample_sigma(key_s, shape[0]), frame_noise(key_n, shape)


def frame_mask(batch):
  """[B, F] real latent frames of a batch (absent `frame_mask`: all are)."""
  b, f = batch["latents"].shape[:2]
  return batch.get("frame_mask", jnp.ones((b, f), bool))


def scored_values(batch) -> jax.Array:
  """How many latent values of the batch the loss averages over (its real frames)."""
  return jnp.sum(frame_mask(batch)) * math.prod(batch["latents"].shape[2:])


def squared_error(apply_fn, params, batch, s_B, noise_BxFxHxWxC):
  """Summed squared velocity error in fp32 over the real latent frames of `batch`, noised to
  sigmas `s_B` with `noise`; padding frames add nothing to it or its gradient."""
  x0_BxFxHxWxC = batch["latents"].astype(jnp.float32)
  s_Bx1 = s_B.reshape(-1, 1, 1, 1, 1)
  xt_BxFxHxWxC = (1 - s_Bx1) * x0_BxFxHxWxC + s_Bx1 * noise_BxFxHxWxC
  target_BxFxHxWxC = noise_BxFxHxWxC - x0_BxFxHxWxC
  pred_BxFxHxWxC = apply_fn(params, xt_BxFxHxWxC, 1000.0 * s_B, batch["context"], batch["shots"])
  err_BxFxHxWxC = jnp.square(pred_BxFxHxWxC.astype(jnp.float32) - target_BxFxHxWxC)
  return jnp.sum(jnp.where(frame_mask(batch)[:, :, None, None, None], err_BxFxHxWxC, 0.0))


def flow_matching_loss(apply_fn, params, batch, key, fm: FlowMatching):
  """(mean squared velocity error in fp32 over the real latent frames, aux metrics) for one
  batch. `batch["frame_mask"]` [B, F] marks real frames (absent: all are); padding frames add
  nothing to the loss or its gradient."""
  s_B, noise_BxFxHxWxC = draw(key, batch["latents"].shape, fm)
  loss = squared_error(apply_fn, params, batch, s_B, noise_BxFxHxWxC) / scored_values(batch)
  return loss, dict(timestep=jnp.mean(1000.0 * s_B))
