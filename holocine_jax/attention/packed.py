"""Portable XLA path for HoloCine sparse attention: pack shots, attend [own shot ; summaries].

Each shot is gathered into a slot of `max_shot_tokens` rows, so work is N * S * (S + G) instead of
L * (L + G); cuts may change freely at fixed shapes. Softmax in fp32 over both parts jointly.
Legend: B batch, L tokens, N shots (padded), S shot slot length, G summary slots, H heads, K head
dim.
"""

import jax.numpy as jnp

from holocine_jax.attention import reference
from holocine_jax.layout import ShotBatch


def packed_shot_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, shots: ShotBatch):
  """Same result as reference.sparse_shot_attention, without the [L, L+G] logits."""
  b, num_l, h, k = q_BxLxHxK.shape
  n, s = shots.max_shots, shots.max_shot_tokens
  start_BxN, end_BxN = shots.shot_bounds_BxNx2[..., 0], shots.shot_bounds_BxNx2[..., 1]
  pos_BxNxS = start_BxN[..., None] + jnp.arange(s, dtype=jnp.int32)
  valid_BxNxS = pos_BxNxS < end_BxN[..., None]
  flat_BxNS = jnp.minimum(pos_BxNxS, num_l - 1).reshape(b, n * s)

  def pack(x_BxLxHxK):
    return jnp.take_along_axis(x_BxLxHxK, flat_BxNS[:, :, None, None], axis=1).reshape(
      b, n, s, h, k
    )

  f32 = lambda x: x.astype(jnp.float32)
  q_BxNxSxHxK = f32(pack(q_BxLxHxK)) * k**-0.5
  k_own, v_own = f32(pack(k_BxLxHxK)), f32(pack(v_BxLxHxK))
  k_sum_BxGxHxK = f32(reference.summaries(k_BxLxHxK, shots))
  v_sum_BxGxHxK = f32(reference.summaries(v_BxLxHxK, shots))
  own_BxNxHxSxS = jnp.einsum("bnshk,bnthk->bnhst", q_BxNxSxHxK, k_own)
  own_BxNxHxSxS = jnp.where(valid_BxNxS[:, :, None, None, :], own_BxNxHxSxS, -jnp.inf)
  sum_BxNxHxSxG = jnp.einsum("bnshk,bghk->bnhsg", q_BxNxSxHxK, k_sum_BxGxHxK)
  sum_BxNxHxSxG = jnp.where(
    shots.summary_valid_BxG[:, None, None, None, :], sum_BxNxHxSxG, -jnp.inf
  )
  # One softmax over both parts without concatenating them: shared max, summed denominators.
  m_BxNxHxSx1 = jnp.maximum(
    own_BxNxHxSxS.max(-1, keepdims=True), sum_BxNxHxSxG.max(-1, keepdims=True)
  )
  p_own = jnp.exp(own_BxNxHxSxS - m_BxNxHxSx1)
  p_sum = jnp.exp(sum_BxNxHxSxG - m_BxNxHxSx1)
  denom_BxNxHxSx1 = p_own.sum(-1, keepdims=True) + p_sum.sum(-1, keepdims=True)
  out_BxNxHxSxK = jnp.einsum("bnhst,bnthk->bnhsk", p_own, v_own) + jnp.einsum(
    "bnhsg,bghk->bnhsk", p_sum, v_sum_BxGxHxK
  )
  out_BxNxSxHxK = jnp.moveaxis(out_BxNxHxSxK / denom_BxNxHxSx1, 2, 3)
  real_BxL = shots.shot_id_BxL >= 0  # padding tokens (layout.PAD_SHOT_ID) belong to no shot
  shot_BxL = jnp.where(real_BxL, shots.shot_id_BxL, 0)
  own_start_BxL = jnp.take_along_axis(start_BxN, shot_BxL, axis=1)
  slot_BxL = shot_BxL * s + jnp.arange(num_l, dtype=jnp.int32)[None] - own_start_BxL
  out_BxLxHxK = jnp.take_along_axis(
    out_BxNxSxHxK.reshape(b, n * s, h, k), jnp.where(real_BxL, slot_BxL, 0)[:, :, None, None], 1
  )
  return jnp.where(real_BxL[:, :, None, None], out_BxLxHxK, 0).astype(q_BxLxHxK.dtype)
