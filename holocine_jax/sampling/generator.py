"""Scenes -> videos: text encoding, noise per seed, holistic two-expert sampling, decoding.

`Generator(batch)` is what the job calls: one batch of equal-shape requests in, uint8 frames and
timings per request out. Decoding is the Wan VAE, or (tiny configs trained on synthetic latents)
a fixed latent-to-RGB preview.
Legend: B scenes, F/H/W latent grid, C latent channels, T frames, E text dim.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from holocine_jax import layout, sharding
from holocine_jax.model.dit import WanDiT
from holocine_jax.sampling.pipeline import Sampler, SamplerConfig
from holocine_jax.sampling.requests import SceneRequest
from holocine_jax.scene import VAE_TIME_STRIDE

VAE_SPACE_STRIDE = 8


def latent_preview(latents_BxFxHxWxC, num_frames: int, height: int, width: int):
  """uint8 [B, T, H, W, 3] preview: a fixed projection of the latent channels to RGB, repeated
  to the video's frames (first latent frame once, then 4 each) and upsampled to its size."""
  c = latents_BxFxHxWxC.shape[-1]
  proj_CxRGB = jnp.asarray(np.random.default_rng(0).standard_normal((c, 3)) / np.sqrt(c))
  rgb = jnp.tanh(jnp.einsum("bfhwc,cr->bfhwr", latents_BxFxHxWxC.astype(jnp.float32), proj_CxRGB))
  times = np.minimum(
    (np.arange(num_frames) + VAE_TIME_STRIDE - 1) // VAE_TIME_STRIDE, rgb.shape[1] - 1
  )
  rgb = rgb[:, times]
  rgb = jnp.repeat(jnp.repeat(rgb, height // rgb.shape[2], 2), width // rgb.shape[3], 3)
  return jnp.round((rgb + 1.0) * 127.5).astype(jnp.uint8)


@dataclasses.dataclass
class Generator:
  """Everything resident that sampling a batch needs."""

  model: WanDiT
  sampler: SamplerConfig
  params_high: object
  params_low: object | None
  text: object  # ToyText or text.PromptEncoder (encode_for_cfg)
  decode: Callable  # (latents [B, F, H, W, C], num_frames, height, width) -> uint8 video
  mesh: jax.sharding.Mesh
  rules: tuple
  max_shots: int
  max_shot_frames: int | None  # None: per batch, layout.round_shot_bound of its longest shot
  text_len: int

  @functools.cached_property
  def data_parallel(self) -> int:
    return sharding.batch_shards(self.mesh, self.rules)

  def _sampler(self, steps: int, guidance: tuple[float, float]) -> Sampler:
    return _cached_sampler(
      self.model,
      dataclasses.replace(
        self.sampler, num_steps=steps, guidance_high=guidance[0], guidance_low=guidance[1]
      ),
    )

  def __call__(self, batch: list[SceneRequest]) -> list[tuple[np.ndarray, dict]]:
    r0, n = batch[0], len(batch)
    padded = batch + [batch[-1]] * (-n % self.data_parallel)  # whole batch shards
    b = len(padded)
    grid = layout.LatentGrid(
      r0.scene.num_latent_frames,
      r0.height // VAE_SPACE_STRIDE,
      r0.width // VAE_SPACE_STRIDE,
      self.model.config.patch_size,
    )
    start = time.perf_counter()
    pos, neg = self.text.encode_for_cfg([r.scene for r in padded], r0.negative_prompt)
    context_2BxTxE = jnp.concatenate([pos.context_BxTxD, neg.context_BxTxD])
    lays = [layout.ShotLayout.from_scene(r.scene, grid) for r in padded]
    longest = max(max(lay.latent_frames_per_shot()) for lay in lays)
    shots = layout.make_batch(
      lays * 2,
      list(pos.windows) + [None] * b,
      max_shots=self.max_shots,
      max_shot_frames=self.max_shot_frames or layout.round_shot_bound(longest, grid.frames),
      text_len=context_2BxTxE.shape[1],
    )
    noise = jnp.stack(
      [
        jax.random.normal(
          jax.random.key(r.seed),
          (grid.frames, grid.height, grid.width, self.model.config.in_channels),
        )
        for r in padded
      ]
    )
    text_s = time.perf_counter() - start
    batch_sharding = NamedSharding(self.mesh, P(sharding.batch_axes(self.rules)))
    noise, context_2BxTxE, shots = jax.device_put((noise, context_2BxTxE, shots), batch_sharding)
    start = time.perf_counter()
    with sharding.activate(self.mesh, self.rules):
      latents = self._sampler(r0.steps, r0.guidance)(
        self.params_high, self.params_low, noise, context_2BxTxE, shots
      )
      latents = jax.block_until_ready(latents)
      denoise_s = time.perf_counter() - start
      start = time.perf_counter()
      video = np.asarray(self.decode(latents, r0.scene.num_frames, r0.height, r0.width))
    decode_s = time.perf_counter() - start
    timings = dict(
      text_s=text_s / b,
      denoise_s=denoise_s / b,
      step_s=denoise_s / r0.steps,
      decode_s=decode_s / b,
      batch=b,
    )
    return [(video[i], timings) for i in range(n)]


@functools.lru_cache(maxsize=8)
def _cached_sampler(model: WanDiT, config: SamplerConfig) -> Sampler:
  return Sampler(model, config)
