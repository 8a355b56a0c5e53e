"""Wan2.1 VAE hyper-parameters (the z_dim 16 VAE that Wan2.2-A14B and HoloCine use)."""

from __future__ import annotations

import dataclasses

from holocine_jax.model.config import ModelConfig

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
