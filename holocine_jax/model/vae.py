"""The Wan2.1 video VAE (z_dim 16): causal 3D-conv encoder/decoder with a chunked time cache.

Channels last. Video [B, T, H, W, 3] in [-1, 1] with T = 4t+1 <-> latents [B, T', H/8, W/8, z],
T' = (T-1)//4 + 1, normalised per channel ((mu - mean) / std) so the DiT sees unit-scale latents.
Time runs in chunks: encode takes the first frame, then 4 frames per latent frame; decode takes
one latent frame at a time. Each causal conv keeps the last frames it needs in the 'cache'
collection; that pytree is the `jax.lax.scan` carry, so memory does not grow with the clip.
Legend: B batch, T frames (video or latent, as the tensor holds), H height, W width, C channels,
D a block's channels, Z latent channels, L = H*W tokens of one frame, N scan steps.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from holocine_jax.model.config import ModelConfig
from holocine_jax.model.layers import constrain, param_init
from holocine_jax.video import check_video_shape

ACT_BTHWC = ("act_batch", "act_frames", "act_height", "act_width", "act_channels")

WAN21_LATENTS_MEAN = (
  -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
  0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
  2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
  3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class VAEConfig(ModelConfig):
  """Wan2.1 VAE hyper-parameters (defaults: the checkpoint used by Wan2.2-A14B and HoloCine).

  decode_chunk / encode_chunk: latent frames per scan step (more = fewer steps, more memory).
  tile_sample_size: (h, w) pixel tile for spatial tiling, None = off; tiles step by
  tile_sample_stride and overlaps are blended linearly, as diffusers' tiled_decode/encode.
  precision: jax.lax precision of convs and attention ("highest" for fp32-exact on TPU).
  """

  z_dim: int = 16
  base_dim: int = 96
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temperal_downsample: tuple[bool, ...] = (False, True, True)
  latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
  latents_std: tuple[float, ...] = WAN21_LATENTS_STD
  dropout: float = 0.0
  in_channels: int = 3
  out_channels: int = 3
  param_dtype: str = "float32"
  dtype: str = "float32"
  precision: str | None = None
  decode_chunk: int = 1
  encode_chunk: int = 1
  tile_sample_size: tuple[int, int] | None = None
  tile_sample_stride: tuple[int, int] = (192, 192)

  def __post_init__(self):
    for name in ("dim_mult", "temperal_downsample", "latents_mean", "latents_std"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    for name in ("tile_sample_size", "tile_sample_stride"):
      if getattr(self, name) is not None:
        object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
    if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
      raise ValueError(
        f"latents_mean/std need z_dim={self.z_dim} values each, got "
        f"{len(self.latents_mean)} and {len(self.latents_std)}"
      )
    if len(self.temperal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(
        f"temperal_downsample needs {len(self.dim_mult) - 1} flags (one per downsample), got "
        f"{len(self.temperal_downsample)}"
      )
    if self.dropout:
      raise ValueError(f"the VAE is inference-only here: dropout must be 0, got {self.dropout}")
    if self.decode_chunk < 1 or self.encode_chunk < 1:
      raise ValueError(
        f"decode_chunk and encode_chunk must be >= 1, got {self.decode_chunk}, {self.encode_chunk}"
      )
    if self.tile_sample_size is not None:
      for size, stride in zip(self.tile_sample_size, self.tile_sample_stride, strict=True):
        m = self.space_stride
        if size % m or stride % m or not 0 < stride <= size:
          raise ValueError(
            f"tile_sample_size {self.tile_sample_size} and stride {self.tile_sample_stride} must "
            f"be multiples of {m} with 0 < stride <= size"
          )
    if self.precision not in (None, "default", "high", "highest"):
      raise ValueError(
        f"precision must be None, 'default', 'high' or 'highest', got {self.precision}"
      )
    self._check_dtypes()

  @property
  def time_stride(self) -> int:
    return 2 ** sum(self.temperal_downsample)

  @property
  def space_stride(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)


# ---------------------------------------------------------------------------------------------
# Layers.


def _kernel(mod: nn.Module, shape, out_axis: str | None):
  """A conv kernel [*taps, in, out] and bias [out] with logical axis names."""
  c = mod.config
  taps = (None,) * (len(shape) - 2)
  kernel = mod.param(
    "kernel",
    param_init(nn.initializers.lecun_normal(), (*taps, "conv_in", out_axis)),
    shape,
    c.params_dtype,
  )
  bias = mod.param(
    "bias", param_init(nn.initializers.zeros, (out_axis,)), shape[-1:], c.params_dtype
  )
  return kernel, bias


def _conv3d(x_BxTxHxWxC, kernel, bias, config: VAEConfig, strides=(1, 1, 1), padding=None):
  """Plain 3D conv, time 'valid'; spatial padding as given (default: same for odd taps)."""
  kt, kh, kw = kernel.shape[:3]
  if padding is None:
    padding = ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2))
  dt = config.compute_dtype
  y = jax.lax.conv_general_dilated(
    x_BxTxHxWxC.astype(dt),
    kernel.astype(dt),
    window_strides=strides,
    padding=padding,
    dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    precision=config.precision,
  )
  return y + bias.astype(dt)


class CausalConv3d(nn.Module):
  """3D conv padded on the left in time by a cache of the previous chunk's last frames.

  A fresh cache is zeros, i.e. the whole-clip conv with time padding (2p, 0). `skip=True` (first
  chunk of a temporal resample) returns x untouched and, if `prime`, fills the cache from x.
  """

  config: VAEConfig
  features: int
  kernel_size: tuple[int, int, int] = (3, 3, 3)
  stride_t: int = 1
  cache_frames: int | None = None  # default kt - 1
  prime: bool = False
  out_axis: str | None = "conv_out"

  @nn.compact
  def __call__(self, x_BxTxHxWxC, skip: bool = False):
    b, _, h, w, cin = x_BxTxHxWxC.shape
    kernel, bias = _kernel(self, (*self.kernel_size, cin, self.features), self.out_axis)
    n = self.kernel_size[0] - 1 if self.cache_frames is None else self.cache_frames
    if n == 0:
      return _conv3d(x_BxTxHxWxC, kernel, bias, self.config)
    dt = self.config.compute_dtype
    cache = self.variable("cache", "frames", jnp.zeros, (b, n, h, w, cin), dt)
    x_full = jnp.concatenate([cache.value, x_BxTxHxWxC.astype(dt)], axis=1)
    if skip:
      if self.prime:
        cache.value = x_full[:, -n:]
      return x_BxTxHxWxC
    cache.value = x_full[:, -n:]
    return _conv3d(x_full, kernel, bias, self.config, strides=(self.stride_t, 1, 1))


class ChannelRMSNorm(nn.Module):
  """x / ||x||_2 over channels * sqrt(C) * gamma (diffusers WanRMS_norm, no bias), fp32 inside."""

  config: VAEConfig

  @nn.compact
  def __call__(self, x_BxTxHxWxC):
    d = x_BxTxHxWxC.shape[-1]
    gamma = self.param(
      "scale", param_init(nn.initializers.ones, ("conv_out",)), (d,), self.config.params_dtype
    )
    xf = x_BxTxHxWxC.astype(jnp.float32)
    inv = jax.lax.rsqrt(jnp.maximum(jnp.sum(xf * xf, axis=-1, keepdims=True), 1e-24))
    y = xf * inv * (d**0.5) * gamma.astype(jnp.float32)
    return y.astype(x_BxTxHxWxC.dtype)


class ResBlock(nn.Module):
  """x -> shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))."""

  config: VAEConfig
  features: int

  @nn.compact
  def __call__(self, x_BxTxHxWxC):
    c = self.config
    cin = x_BxTxHxWxC.shape[-1]
    if cin != self.features:
      h_BxTxHxWxD = CausalConv3d(c, self.features, (1, 1, 1), name="shortcut")(x_BxTxHxWxC)
    else:
      h_BxTxHxWxD = x_BxTxHxWxC.astype(c.compute_dtype)
    y = nn.silu(ChannelRMSNorm(c, name="norm1")(x_BxTxHxWxC))
    y = CausalConv3d(c, self.features, name="conv1")(y)
    y = nn.silu(ChannelRMSNorm(c, name="norm2")(y))
    y = CausalConv3d(c, self.features, name="conv2")(y)
    return constrain(y + h_BxTxHxWxD, ACT_BTHWC)


class Pointwise(nn.Module):
  """1x1 conv on channels-last x: y = x . W + b over the last dim (diffusers' 1x1 Conv2d)."""

  config: VAEConfig
  features: int

  @nn.compact
  def __call__(self, x):
    c = self.config
    kernel, bias = _kernel(self, (x.shape[-1], self.features), "conv_out")
    dt = c.compute_dtype
    y = jnp.einsum("...c,cd->...d", x.astype(dt), kernel.astype(dt), precision=c.precision)
    return y + bias.astype(dt)


class SpatialConv(nn.Module):
  """3x3 conv applied to every frame: stride 1 'same' (upsample) or stride 2 with diffusers'
  right/bottom zero pad of one (ZeroPad2d((0, 1, 0, 1)), downsample)."""

  config: VAEConfig
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x_BxTxHxWxC):
    kernel, bias = _kernel(self, (3, 3, x_BxTxHxWxC.shape[-1], self.features), "conv_out")
    s = self.stride
    padding = ((0, 0), (1, 1), (1, 1)) if s == 1 else ((0, 0), (0, 1), (0, 1))
    return _conv3d(x_BxTxHxWxC, kernel[None], bias, self.config, (1, s, s), padding)


class AttnBlock(nn.Module):
  """Single-head self-attention over the H*W positions of each frame, residual."""

  config: VAEConfig

  @nn.compact
  def __call__(self, x_BxTxHxWxC):
    c = self.config
    b, t, h, w, d = x_BxTxHxWxC.shape
    dt = c.compute_dtype
    y = ChannelRMSNorm(c, name="norm")(x_BxTxHxWxC)
    qkv_BxTxLx3D = Pointwise(c, 3 * d, name="qkv")(y).reshape(b, t, h * w, 3 * d)
    q_BxTxLxD, k_BxTxLxD, v_BxTxLxD = jnp.split(qkv_BxTxLx3D, 3, axis=-1)
    s_BxTxLxL = jnp.einsum("btld,btmd->btlm", q_BxTxLxD, k_BxTxLxD, precision=c.precision)
    p_BxTxLxL = jax.nn.softmax(s_BxTxLxL.astype(jnp.float32) / math.sqrt(d), axis=-1).astype(dt)
    o_BxTxLxD = jnp.einsum("btlm,btmd->btld", p_BxTxLxL, v_BxTxLxD, precision=c.precision)
    out_BxTxHxWxC = Pointwise(c, d, name="proj")(o_BxTxLxD).reshape(b, t, h, w, d)
    return constrain(x_BxTxHxWxC.astype(dt) + out_BxTxHxWxC, ACT_BTHWC)


class Resample(nn.Module):
  """Spatial x2 down/up (3x3 conv) with an optional causal time conv (x2 frames, first-frame aware).

  down3d: after the spatial conv, a stride-2 time conv over [previous frame, chunk]; the very first
  chunk passes through (the first frame is its own latent frame). up3d: before the spatial conv,
  a causal time conv doubling channels, interleaved into 2x frames; the first chunk passes through
  and the next chunk sees zero history, as diffusers' "Rep" cache does.
  """

  config: VAEConfig
  mode: str  # "down2d" | "down3d" | "up2d" | "up3d"

  @nn.compact
  def __call__(self, x_BxTxHxWxC, first: bool):
    c = self.config
    b, t, h, w, d = x_BxTxHxWxC.shape
    if self.mode == "up3d":
      y = CausalConv3d(c, 2 * d, (3, 1, 1), name="time")(x_BxTxHxWxC, skip=first)
      if not first:
        y = y.reshape(b, t, h, w, 2, d).transpose(0, 1, 4, 2, 3, 5)
        x_BxTxHxWxC = y.reshape(b, 2 * t, h, w, d)
    if self.mode.startswith("up"):
      x_BxTxHxWxC = jnp.repeat(jnp.repeat(x_BxTxHxWxC, 2, axis=2), 2, axis=3)  # nearest x2
      return SpatialConv(c, d // 2, name="spatial")(x_BxTxHxWxC)
    x_BxTxHxWxC = SpatialConv(c, d, stride=2, name="spatial")(x_BxTxHxWxC)
    if self.mode == "down3d":
      conv = CausalConv3d(c, d, (3, 1, 1), stride_t=2, cache_frames=1, prime=True, name="time")
      x_BxTxHxWxC = conv(x_BxTxHxWxC, skip=first)
    return x_BxTxHxWxC


class MidBlock(nn.Module):
  """ResBlock -> AttnBlock -> ResBlock at the lowest resolution."""

  config: VAEConfig

  @nn.compact
  def __call__(self, x_BxTxHxWxC):
    c, d = self.config, x_BxTxHxWxC.shape[-1]
    x_BxTxHxWxC = ResBlock(c, d, name="res_0")(x_BxTxHxWxC)
    x_BxTxHxWxC = AttnBlock(c, name="attn")(x_BxTxHxWxC)
    return ResBlock(c, d, name="res_1")(x_BxTxHxWxC)


class Encoder(nn.Module):
  """conv_in -> [ResBlock x n, Resample] per level (flat 'down_k', as diffusers) -> mid -> head."""

  config: VAEConfig

  @nn.compact
  def __call__(self, x_BxTxHxWxC, first: bool):
    c = self.config
    dims = [c.base_dim * m for m in (1, *c.dim_mult)]
    x = CausalConv3d(c, dims[0], name="conv_in")(x_BxTxHxWxC)
    k = 0
    for i, d in enumerate(dims[1:]):
      for _ in range(c.num_res_blocks):
        x = ResBlock(c, d, name=f"down_{k}")(x)
        k += 1
      if i != len(c.dim_mult) - 1:
        mode = "down3d" if c.temperal_downsample[i] else "down2d"
        x = Resample(c, mode, name=f"down_{k}")(x, first)
        k += 1
    x = MidBlock(c, name="mid")(x)
    x = nn.silu(ChannelRMSNorm(c, name="norm_out")(x))
    return CausalConv3d(c, 2 * c.z_dim, name="conv_out")(x)


class UpBlock(nn.Module):
  """ResBlock x (n+1), then an optional Resample that halves the channels."""

  config: VAEConfig
  features: int
  mode: str | None

  @nn.compact
  def __call__(self, x_BxTxHxWxC, first: bool):
    for j in range(self.config.num_res_blocks + 1):
      x_BxTxHxWxC = ResBlock(self.config, self.features, name=f"res_{j}")(x_BxTxHxWxC)
    if self.mode is not None:
      x_BxTxHxWxC = Resample(self.config, self.mode, name="resample")(x_BxTxHxWxC, first)
    return x_BxTxHxWxC


class Decoder(nn.Module):
  """conv_in -> mid -> up blocks (time x2 at the first two, space x2 but the last) -> head."""

  config: VAEConfig

  @nn.compact
  def __call__(self, z_BxTxHxWxZ, first: bool):
    c = self.config
    dims = [c.base_dim * m for m in (c.dim_mult[-1], *c.dim_mult[::-1])]
    temperal_upsample = c.temperal_downsample[::-1]
    x = CausalConv3d(c, dims[0], name="conv_in")(z_BxTxHxWxZ)
    x = MidBlock(c, name="mid")(x)
    for i, d in enumerate(dims[1:]):
      mode = None
      if i != len(c.dim_mult) - 1:
        mode = "up3d" if temperal_upsample[i] else "up2d"
      x = UpBlock(c, d, mode, name=f"up_{i}")(x, first)
    x = nn.silu(ChannelRMSNorm(c, name="norm_out")(x))
    return CausalConv3d(c, c.out_channels, out_axis=None, name="conv_out")(x)


class WanVAE(nn.Module):
  """Encoder + quant_conv (-> posterior mean) and post_quant_conv + Decoder, one chunk per call."""

  config: VAEConfig

  def setup(self):
    c = self.config
    self.encoder = Encoder(c)
    self.quant_conv = CausalConv3d(c, 2 * c.z_dim, (1, 1, 1))
    self.post_quant_conv = CausalConv3d(c, c.z_dim, (1, 1, 1))
    self.decoder = Decoder(c)

  def encode_chunk(self, x_BxTxHxWxC, first: bool):
    """Video chunk (1 frame if first, else 4k) -> posterior mean [B, k, H/8, W/8, Z], raw scale."""
    h = self.quant_conv(self.encoder(x_BxTxHxWxC, first))
    return constrain(h[..., : self.config.z_dim], ACT_BTHWC)

  def decode_chunk(self, z_BxTxHxWxZ, first: bool):
    """Raw-scale latent chunk -> video frames (1 if first, else 4 per latent), unclamped."""
    out = self.decoder(self.post_quant_conv(z_BxTxHxWxZ), first)
    return constrain(out, ACT_BTHWC)

  def __call__(self, x_BxTxHxWxC):
    """Touches every parameter (for init): encode then decode the first frame."""
    return self.decode_chunk(self.encode_chunk(x_BxTxHxWxC[:, :1], True), True)


# ---------------------------------------------------------------------------------------------
# Functional API.


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
