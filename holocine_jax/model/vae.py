"""The Wan2.1 video VAE (z_dim 16): init, encode and decode over whole clips (chunked time scan,
optional spatial tiles). The network is `vae_modules`, the hyper-parameters `vae_config`.

Channels last. Video [B, T, H, W, 3] in [-1, 1] with T = 4t+1 <-> latents [B, T', H/8, W/8, z],
T' = (T-1)//4 + 1, normalised per channel ((mu - mean) / std) so the DiT sees unit-scale latents.
Time runs in chunks: encode takes the first frame, then 4 frames per latent frame; decode takes
one latent frame at a time. Each causal conv keeps the last frames it needs in the 'cache'
collection; that pytree is the `jax.lax.scan` carry, so memory does not grow with the clip.
Legend: B batch, T frames (video or latent, as the tensor holds), H height, W width, C channels,
Z latent channels, G tiles of one shape.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from holocine_jax.model.layers import constrain
from holocine_jax.model.vae_config import VAEConfig
from holocine_jax.model.vae_modules import ACT_BTHWC, WanVAE
from holocine_jax.video import check_video_shape

__all__ = ["VAEConfig", "decode", "encode", "init_fn"]


def init_fn(config: VAEConfig):
  """key -> boxed params, for `sharding.init_sharded` / `sharding.abstract_params`. The dummy
  frame is built inside the traced function, so eval_shape / lower run no eager op."""
  model = WanVAE(config)
  s = config.space_stride

  def init(key):
    video_BxTxHxWxC = jnp.zeros((1, 1, s, s, config.in_channels), config.compute_dtype)
    return model.init(key, video_BxTxHxWxC)["params"]

  return init


def _run_chunks(model, method, params, x_BxTxHxWxC, first_len: int, step_len: int):
  """Runs `method` on x[:, :first_len] (first=True), then `jax.lax.scan`s it over steps of
  `step_len` frames threading the cache; a shorter remainder runs once after the scan.

  Steps read their chunk with a dynamic slice and write their output in place into one
  preallocated buffer (carried), so no stacked or transposed copy of the clip is made.
  """
  apply = functools.partial(model.apply, method=method, mutable=["cache"])
  y0, variables = apply({"params": params}, x_BxTxHxWxC[:, :first_len], True)
  cache = variables["cache"]
  t = x_BxTxHxWxC.shape[1] - first_len
  n, rem = divmod(t, step_len)
  if n == 0 and rem == 0:
    return y0

  def run(cache, start, length):
    chunk = jax.lax.dynamic_slice_in_dim(x_BxTxHxWxC, start, length, axis=1)
    y, variables = apply({"params": params, "cache": cache}, chunk, False)
    return variables["cache"], y

  out_len = lambda length: jax.eval_shape(lambda c: run(c, first_len, length), cache)[1].shape[1]
  out_step = out_len(step_len) if n else 0
  out_rem = out_len(rem) if rem else 0
  y0_len = y0.shape[1]
  buf = jnp.zeros((y0.shape[0], y0_len + n * out_step + out_rem, *y0.shape[2:]), y0.dtype)
  buf = jax.lax.dynamic_update_slice_in_dim(buf, y0, 0, axis=1)

  def step(carry, i):
    cache, buf = carry
    cache, y = run(cache, first_len + i * step_len, step_len)
    buf = jax.lax.dynamic_update_slice_in_dim(buf, y, y0_len + i * out_step, axis=1)
    return (cache, constrain(buf, ACT_BTHWC)), None

  if n:
    (cache, buf), _ = jax.lax.scan(step, (cache, buf), jnp.arange(n))
  if rem:
    _, y = run(cache, first_len + n * step_len, rem)
    buf = jax.lax.dynamic_update_slice_in_dim(buf, y, y0_len + n * out_step, axis=1)
  return buf


def _blend(prev, cur, extent: int, axis: int):
  """Linear cross-fade of prev's last `extent` rows into cur's first (diffusers blend_v/h)."""
  extent = min(prev.shape[axis], cur.shape[axis], extent)
  if extent <= 0:
    return cur
  shape = [1] * cur.ndim
  shape[axis] = extent
  ramp = (jnp.arange(extent, dtype=jnp.float32) / extent).reshape(shape).astype(cur.dtype)
  head = jax.lax.slice_in_dim(cur, 0, extent, axis=axis)
  tail = jax.lax.slice_in_dim(prev, prev.shape[axis] - extent, prev.shape[axis], axis=axis)
  mixed = tail * (1 - ramp) + head * ramp
  return jnp.concatenate(
    [mixed, jax.lax.slice_in_dim(cur, extent, cur.shape[axis], axis=axis)], axis
  )


def _tiled(fn, x_BxTxHxWxC, tile_in, stride_in, tile_out, stride_out, out_hw):
  """Applies fn to overlapping spatial tiles of x, blends the overlaps and stitches, in the order
  and with the in-place semantics of diffusers' tiled_decode/tiled_encode.

  Tiles of one shape (interior, right edge, bottom edge, corner) run through one `lax.map`, so
  they share one compiled body and run one after another (memory of one tile at a time).
  """
  _, _, h, w, _ = x_BxTxHxWxC.shape
  starts = [(i, j) for i in range(0, h, stride_in[0]) for j in range(0, w, stride_in[1])]
  crops = {
    ij: x_BxTxHxWxC[:, :, ij[0] : ij[0] + tile_in[0], ij[1] : ij[1] + tile_in[1]] for ij in starts
  }
  groups: dict[tuple[int, ...], list[tuple[int, int]]] = {}
  for ij in starts:
    groups.setdefault(crops[ij].shape, []).append(ij)
  done = {}
  for members in groups.values():
    if len(members) == 1:
      done[members[0]] = fn(crops[members[0]])
      continue
    outs_G = jax.lax.map(fn, jnp.stack([crops[ij] for ij in members]))
    done.update({ij: outs_G[g] for g, ij in enumerate(members)})
  rows = [[done[(i, j)] for j in range(0, w, stride_in[1])] for i in range(0, h, stride_in[0])]
  blend = (tile_out[0] - stride_out[0], tile_out[1] - stride_out[1])
  out_rows = []
  for i, row in enumerate(rows):
    for j in range(len(row)):
      tile = row[j]
      if i > 0:
        tile = _blend(rows[i - 1][j], tile, blend[0], axis=2)
      if j > 0:
        tile = _blend(row[j - 1], tile, blend[1], axis=3)
      row[j] = tile
    out_rows.append(
      jnp.concatenate([t[:, :, : stride_out[0], : stride_out[1]] for t in row], axis=3)
    )
  return jnp.concatenate(out_rows, axis=2)[:, :, : out_hw[0], : out_hw[1]]


def _stats(config: VAEConfig, dtype):
  mean = jnp.asarray(config.latents_mean, jnp.float32).astype(dtype)
  std = jnp.asarray(config.latents_std, jnp.float32).astype(dtype)
  return mean, std


def _encode_raw(params, x_BxTxHxWxC, config: VAEConfig):
  step = config.time_stride * config.encode_chunk
  return _run_chunks(WanVAE(config), WanVAE.encode_chunk, params, x_BxTxHxWxC, 1, step)


def _decode_raw(params, z_BxTxHxWxZ, config: VAEConfig):
  model = WanVAE(config)
  return _run_chunks(model, WanVAE.decode_chunk, params, z_BxTxHxWxZ, 1, config.decode_chunk)


def encode(params, video_BxTxHxWxC, config: VAEConfig):
  """Video [B, T=4t+1, H, W, 3] in [-1, 1] -> normalised posterior mean [B, t+1, H/8, W/8, Z]."""
  check_video_shape(
    video_BxTxHxWxC.shape,
    channels=config.in_channels,
    space_multiple=config.space_stride,
    time_stride=config.time_stride,
  )
  c = config
  # No up-front cast: each chunk is cast by its first conv, so no converted copy of the clip.
  x_BxTxHxWxC = constrain(video_BxTxHxWxC, ACT_BTHWC)
  _, _, h, w, _ = x_BxTxHxWxC.shape
  s = c.space_stride
  if c.tile_sample_size is not None and (h > c.tile_sample_size[0] or w > c.tile_sample_size[1]):
    mu = _tiled(
      lambda x: _encode_raw(params, x, c),
      x_BxTxHxWxC,
      c.tile_sample_size,
      c.tile_sample_stride,
      tuple(v // s for v in c.tile_sample_size),
      tuple(v // s for v in c.tile_sample_stride),
      (h // s, w // s),
    )
  else:
    mu = _encode_raw(params, x_BxTxHxWxC, c)
  mean, std = _stats(c, mu.dtype)
  return constrain((mu - mean) / std, ACT_BTHWC)


def decode(params, latents_BxTxHxWxZ, config: VAEConfig):
  """Normalised latents [B, T', h, w, Z] -> video [B, 4(T'-1)+1, 8h, 8w, 3] clamped to [-1, 1]."""
  c = config
  if latents_BxTxHxWxZ.ndim != 5 or latents_BxTxHxWxZ.shape[-1] != c.z_dim:
    raise ValueError(
      f"latents must be [B, T, H, W, {c.z_dim}] (channels last), got {latents_BxTxHxWxZ.shape}"
    )
  mean, std = _stats(c, c.compute_dtype)
  z_BxTxHxWxZ = constrain(latents_BxTxHxWxZ.astype(c.compute_dtype) * std + mean, ACT_BTHWC)
  _, _, h, w, _ = z_BxTxHxWxZ.shape
  s = c.space_stride
  if c.tile_sample_size is not None and (
    h > c.tile_sample_size[0] // s or w > c.tile_sample_size[1] // s
  ):
    out = _tiled(
      lambda z: _decode_raw(params, z, c),
      z_BxTxHxWxZ,
      tuple(v // s for v in c.tile_sample_size),
      tuple(v // s for v in c.tile_sample_stride),
      c.tile_sample_size,
      c.tile_sample_stride,
      (h * s, w * s),
    )
  else:
    out = _decode_raw(params, z_BxTxHxWxZ, c)
  return constrain(jnp.clip(out, -1.0, 1.0), ACT_BTHWC)
