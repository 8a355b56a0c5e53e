"""Dense masks from a `ShotBatch`: HoloCine sparse self-attention and window cross-attention.

Legend: B batch, L video tokens, G summary slots, T text tokens.
"""

import jax.numpy as jnp

from holocine_jax.layout import WINDOW_BLOCK_BIAS, ShotBatch


def sparse_self_allow(shots: ShotBatch) -> jnp.ndarray:
  """[B, L, L+G] bool over KV = [all tokens ; summary tail].

  Query q sees kv j < L iff shot(j) == shot(q), and every valid tail slot j >= L. A query's own
  summary therefore appears twice in its softmax, as in the released HoloCine.
  """
  shot_BxL = shots.shot_id_BxL
  own_BxLxL = shot_BxL[:, :, None] == shot_BxL[:, None, :]
  tail_BxLxG = jnp.broadcast_to(
    shots.summary_valid_BxG[:, None, :], (*shot_BxL.shape, shots.summary_valid_BxG.shape[1])
  )
  return jnp.concatenate([own_BxLxL, tail_BxLxG], axis=-1)


def window_cross_bias(shots: ShotBatch, dtype=jnp.float32) -> jnp.ndarray:
  """[B, L, T] additive bias: 0 inside a token's shot window, -1e4 outside."""
  allow_BxLxT = jnp.take_along_axis(shots.text_allow_BxNxT, shots.shot_id_BxL[:, :, None], axis=1)
  return jnp.where(allow_BxLxT, 0.0, WINDOW_BLOCK_BIAS).astype(dtype)
