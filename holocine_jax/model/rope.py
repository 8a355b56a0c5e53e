"""Wan 3D rotary position embedding: head_dim split into time / height / width parts.

For head_dim K the height and width parts get 2*(K//6) dims each and time the rest (44/42/42 at
K=128). Angles are built in float64 on the host per axis (tiny tables) and broadcast on device.
Legend: L tokens, H heads, K head dim, R = K/2 rotation pairs.
"""

import jax.numpy as jnp
import numpy as np


def axis_dims(head_dim: int) -> tuple[int, int, int]:
  hw = 2 * (head_dim // 6)
  return head_dim - 2 * hw, hw, hw


def _axis_angles(n: int, dim: int, theta: float) -> np.ndarray:
  inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
  return np.outer(np.arange(n, dtype=np.float64), inv_freq)


def rope_tables(grid: tuple[int, int, int], head_dim: int, theta: float, max_positions: int):
  """(cos_LxR, sin_LxR) fp32 for a post-patch grid (frames, height, width), row-major tokens."""
  if max(grid) > max_positions:
    raise ValueError(f"post-patch grid {grid} exceeds the RoPE table of {max_positions} positions")
  f, h, w = grid
  per_axis = [_axis_angles(n, d, theta) for n, d in zip(grid, axis_dims(head_dim), strict=True)]

  def table(fn):
    tf, th, tw = (jnp.asarray(fn(a), jnp.float32) for a in per_axis)
    full = jnp.concatenate(
      [
        jnp.broadcast_to(tf[:, None, None], (f, h, w, tf.shape[-1])),
        jnp.broadcast_to(th[None, :, None], (f, h, w, th.shape[-1])),
        jnp.broadcast_to(tw[None, None, :], (f, h, w, tw.shape[-1])),
      ],
      axis=-1,
    )
    return full.reshape(f * h * w, head_dim // 2)

  return table(np.cos), table(np.sin)


def apply_rope(x_BxLxHxK, cos_LxR, sin_LxR):
  """Rotates interleaved pairs (x[2i], x[2i+1]) by the token's angles, in fp32."""
  b, n, h, k = x_BxLxHxK.shape
  x = x_BxLxHxK.astype(jnp.float32).reshape(b, n, h, k // 2, 2)
  x1, x2 = x[..., 0], x[..., 1]
  cos, sin = cos_LxR[None, :, None], sin_LxR[None, :, None]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.reshape(b, n, h, k).astype(x_BxLxHxK.dtype)
