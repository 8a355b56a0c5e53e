"""Weight-only quantization of a Linear kernel [*in, *out] for a frozen LoRA base (QLoRA).

int8: symmetric per output channel, scale [*out] = absmax over the contracted dims / 127.
nf4: QLoRA's NormalFloat4 codes (uint4) with one absmax scale per block of 64 along the last
contracted axis (the whole axis when it is not a multiple of 64) and output channel:
scale [*in[:-1], blocks, *out].
"""

import jax.numpy as jnp

KINDS = ("int8", "nf4")
NF4_BLOCK = 64
# The 16 NormalFloat4 values (Dettmers et al. 2023, QLoRA, Appendix E; bitsandbytes' table).
NF4_TABLE = (
  -1.0,
  -0.6961928009986877,
  -0.5250730514526367,
  -0.39491748809814453,
  -0.28444138169288635,
  -0.18477343022823334,
  -0.09105003625154495,
  0.0,
  0.07958029955625534,
  0.16093020141124725,
  0.24611230194568634,
  0.33791524171829224,
  0.44070982933044434,
  0.5626170039176941,
  0.7229568362236023,
  1.0,
)


def code_dtype(kind: str):
  return {"int8": jnp.int8, "nf4": jnp.uint4}[kind]


def nf4_block(size: int) -> int:
  """Block length along the last contracted axis of `size` elements."""
  return NF4_BLOCK if size % NF4_BLOCK == 0 else size


def scale_shape(kind: str, shape, n_in: int) -> tuple[int, ...]:
  """Shape of the scale of a kernel `shape` [*in, *out] contracting `n_in` dims."""
  ins, outs = tuple(shape[:n_in]), tuple(shape[n_in:])
  if kind == "int8":
    return outs
  return (*ins[:-1], ins[-1] // nf4_block(ins[-1]), *outs)


def scale_axes(kind: str, in_axes, out_axes) -> tuple:
  """Logical axes of the scale (nf4's block axis unsharded: block counts rarely divide a mesh)."""
  return tuple(out_axes) if kind == "int8" else (*in_axes[:-1], None, *out_axes)


def _blocked(w, n_in: int):
  """[*in, *out] -> [*in[:-1], blocks, block, *out] (nf4 blocks of the last contracted axis)."""
  last = w.shape[n_in - 1]
  block = nf4_block(last)
  return w.reshape(*w.shape[: n_in - 1], last // block, block, *w.shape[n_in:])


def quantize(w, kind: str, n_in: int):
  """Float kernel [*in, *out] -> (codes [*in, *out], float32 scale)."""
  w = w.astype(jnp.float32)
  if kind == "int8":
    absmax = jnp.abs(w).max(axis=tuple(range(n_in)))
    scale = absmax / 127.0
    codes = jnp.round(w / jnp.where(scale > 0, scale, 1.0))
    return jnp.clip(codes, -127, 127).astype(jnp.int8), scale
  if kind != "nf4":
    raise ValueError(f"unknown quantization {kind!r}; known: {KINDS}")
  w_blocked = _blocked(w, n_in)
  scale = jnp.abs(w_blocked).max(axis=n_in)
  normed = w_blocked / jnp.expand_dims(jnp.where(scale > 0, scale, 1.0), n_in)
  table = jnp.asarray(NF4_TABLE, jnp.float32)
  # Nearest table value: the number of midpoints below (ties go to the lower value).
  codes = jnp.searchsorted((table[1:] + table[:-1]) / 2, normed, side="left")
  return codes.reshape(w.shape).astype(jnp.uint4), scale


def dequantize(codes, scale, kind: str, n_in: int, dtype):
  """(codes, scale) -> kernel [*in, *out] in `dtype` (computed in float32)."""
  if kind == "int8":
    return (codes.astype(jnp.float32) * scale.astype(jnp.float32)).astype(dtype)
  values = jnp.asarray(NF4_TABLE, jnp.float32)[codes.astype(jnp.int32)]
  w_blocked = _blocked(values, n_in) * jnp.expand_dims(scale.astype(jnp.float32), n_in)
  return w_blocked.reshape(codes.shape).astype(dtype)
