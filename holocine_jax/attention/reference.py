"""Dense masked-softmax attention: the oracle every faster path is tested against.

Materialises [B, H, L, M] logits, so it is for small shapes and for checking. Softmax in fp32.
Legend: B batch, L queries, M keys, H heads, K head dim, G summary slots.
"""

import jax
import jax.numpy as jnp

from holocine_jax.attention import masks
from holocine_jax.layout import ShotBatch


def attention(q_BxLxHxK, k_BxMxHxK, v_BxMxHxK, *, allow_BxLxM=None, bias_BxLxM=None):
  """softmax(q k^T / sqrt(K) + bias, masked by allow) v, computed in fp32."""
  scale = q_BxLxHxK.shape[-1] ** -0.5
  logits_BxHxLxM = (
    jnp.einsum("blhk,bmhk->bhlm", q_BxLxHxK.astype(jnp.float32), k_BxMxHxK.astype(jnp.float32))
    * scale
  )
  if bias_BxLxM is not None:
    logits_BxHxLxM = logits_BxHxLxM + bias_BxLxM[:, None].astype(jnp.float32)
  if allow_BxLxM is not None:
    logits_BxHxLxM = jnp.where(allow_BxLxM[:, None], logits_BxHxLxM, -jnp.inf)
  probs_BxHxLxM = jax.nn.softmax(logits_BxHxLxM, axis=-1)
  out_BxLxHxK = jnp.einsum("bhlm,bmhk->blhk", probs_BxHxLxM, v_BxMxHxK.astype(jnp.float32))
  return out_BxLxHxK.astype(q_BxLxHxK.dtype)


def summaries(x_BxLxHxK, shots: ShotBatch):
  """[B, G, H, K]: every shot's summary tokens (the tail of sparse attention's KV)."""
  return jnp.take_along_axis(x_BxLxHxK, shots.summary_idx_BxG[:, :, None, None], axis=1)


def summary_tail(x_BxLxHxK, shots: ShotBatch):
  """[B, L+G, H, K]: the tokens followed by every shot's summary tokens (the KV of sparse)."""
  return jnp.concatenate([x_BxLxHxK, summaries(x_BxLxHxK, shots)], axis=1)


def sparse_shot_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, shots: ShotBatch):
  """HoloCine inter-shot sparse self-attention: own shot dense + all shots' summaries."""
  return attention(
    q_BxLxHxK,
    summary_tail(k_BxLxHxK, shots),
    summary_tail(v_BxLxHxK, shots),
    allow_BxLxM=masks.sparse_self_allow(shots),
  )
