"""Exact dense attention computed a chunk of queries at a time (`lax.map`).

Each step materialises only [B, H, chunk, M] logits, so memory is bounded by the chunk rather
than by L: this is what keeps window cross-attention ([L, 512] per head) and XLA full attention
affordable at 95k tokens, and it is faster on CPU (cache-resident softmax). Same math as the
reference, per query row.
Legend: B batch, L queries (Lp padded), M keys, H heads, K head dim, C chunks.
"""

import jax
import jax.numpy as jnp

from holocine_jax.attention import reference


def chunked_attention(
  q_BxLxHxK, k_BxMxHxK, v_BxMxHxK, *, bias_BxLxM=None, kv_real_BxM=None, chunk: int = 1024
):
  """softmax(q k^T / sqrt(K) + bias) v over at most `chunk` queries per step; fp32 softmax.
  Keys where `kv_real_BxM` is False (bucket padding) are seen by no query.

  Chunks are balanced (C = ceil(L / chunk) equal chunks, a multiple of 8 long), so padding stays
  under 8 * C rows instead of up to a whole chunk.
  """
  b, num_l, h, d = q_BxLxHxK.shape
  allow_Bx1xM = None if kv_real_BxM is None else kv_real_BxM[:, None, :]
  if num_l <= chunk:
    return reference.attention(
      q_BxLxHxK, k_BxMxHxK, v_BxMxHxK, allow_BxLxM=allow_Bx1xM, bias_BxLxM=bias_BxLxM
    )
  c = -(-num_l // chunk)
  chunk = -(-num_l // (8 * c)) * 8
  pad = c * chunk - num_l

  def chunks(x):
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(b, c, chunk, *x.shape[2:]), 1, 0)

  def one(args):
    q_BxQxHxK, bias = args
    return reference.attention(
      q_BxQxHxK, k_BxMxHxK, v_BxMxHxK, allow_BxLxM=allow_Bx1xM, bias_BxLxM=bias
    )

  bias = None if bias_BxLxM is None else chunks(bias_BxLxM)
  out_CxBxQxHxK = jax.lax.map(one, (chunks(q_BxLxHxK), bias))
  return jnp.moveaxis(out_CxBxQxHxK, 0, 1).reshape(b, c * chunk, h, d)[:, :num_l]
