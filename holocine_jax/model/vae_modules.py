"""The Wan2.1 VAE's network: causal 3D convs, RMS norms, res / attention / resample blocks,
encoder and decoder, one time chunk per call (the runners in `vae` scan them over a clip).

Channels last. Each causal conv keeps the last frames it needs in the 'cache' collection.
Legend: B batch, T frames (video or latent, as the tensor holds), H height, W width, C channels,
D a block's channels, Z latent channels, L = H*W tokens of one frame.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from holocine_jax.model.layers import constrain, param_init
from holocine_jax.model.vae_config import VAEConfig

ACT_BTHWC = ("act_batch", "act_frames", "act_height", "act_width", "act_channels")


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
