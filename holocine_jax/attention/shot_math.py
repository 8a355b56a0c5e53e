"""Block-level math shared by the TPU- and GPU-style shot kernels (2D arrays in, 2D arrays out).

Shot ids say who sees whom: a query sees a key of its own shot (real tokens, id >= 0) and every
valid summary slot (SUMMARY_ID). Per-query values are columns [Q, 1], per-key values rows [1, V],
so every comparison and rescale is a plain 2D broadcast (Mosaic and Triton both lower those).
Online-softmax state is (m [Q, 1], l [Q, 1], acc [Q, K]).
Legend: Q query block, V kv block, K head dim.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from holocine_jax.layout import PAD_SHOT_ID

SUMMARY_ID = -1  # tail slot every query may see
INVALID_ID = PAD_SHOT_ID  # padding: a tail slot of a missing shot, or a token past a layout
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)

_CONTRACT_LAST = (((1,), (1,)), ((), ()))


def rows(x):
  """[.., 1, N]: a per-token array [.., N] as one row (a free reshape)."""
  return x[..., None, :]


def columns(x):
  """[.., N, 1]: a per-token array [.., N] as one column (a free reshape)."""
  return x[..., None]


def visible(qid_Qx1, kvid_1xV):
  """[Q, V] bool: same shot (real tokens) or a valid summary slot."""
  return ((qid_Qx1 == kvid_1xV) & (kvid_1xV >= 0)) | (kvid_1xV == SUMMARY_ID)


def scores(q_QxK, k_VxK, scale: float):
  return (
    jax.lax.dot_general(q_QxK, k_VxK, _CONTRACT_LAST, preferred_element_type=jnp.float32) * scale
  )


def init_state(block_q: int, head_dim: int):
  return (
    jnp.full((block_q, 1), MASK_VALUE, jnp.float32),
    jnp.zeros((block_q, 1), jnp.float32),
    jnp.zeros((block_q, head_dim), jnp.float32),
  )


def online_update(state, q_QxK, k_VxK, v_VxK, qid_Qx1, kvid_1xV, scale: float):
  """One kv block of flash attention: rescale (m, l, acc) and add the block's contribution."""
  m_Qx1, l_Qx1, acc_QxK = state
  vis_QxV = visible(qid_Qx1, kvid_1xV)
  logits_QxV = jnp.where(vis_QxV, scores(q_QxK, k_VxK, scale), MASK_VALUE)
  m_new_Qx1 = jnp.maximum(m_Qx1, logits_QxV.max(axis=1, keepdims=True))
  p_QxV = jnp.where(vis_QxV, jnp.exp(logits_QxV - m_new_Qx1), 0.0)
  alpha_Qx1 = jnp.exp(m_Qx1 - m_new_Qx1)
  acc_QxK = alpha_Qx1 * acc_QxK + jnp.dot(
    p_QxV.astype(v_VxK.dtype), v_VxK, preferred_element_type=jnp.float32
  )
  return m_new_Qx1, alpha_Qx1 * l_Qx1 + p_QxV.sum(axis=1, keepdims=True), acc_QxK


def finish(state):
  """(out [Q, K] fp32, log-sum-exp [Q, 1]) from the final state; rows that saw nothing give 0."""
  m_Qx1, l_Qx1, acc_QxK = state
  safe_Qx1 = jnp.where(l_Qx1 == 0.0, 1.0, l_Qx1)
  return acc_QxK / safe_Qx1, m_Qx1 + jnp.log(safe_Qx1)


def probs_and_dscores(
  q_QxK, k_VxK, v_VxK, do_QxK, lse_Qx1, delta_Qx1, qid_Qx1, kvid_1xV, scale: float
):
  """Recomputed probabilities p and score gradients ds = p * (dO.V^T - delta), both [Q, V]."""
  p_QxV = jnp.where(visible(qid_Qx1, kvid_1xV), jnp.exp(scores(q_QxK, k_VxK, scale) - lse_Qx1), 0.0)
  dp_QxV = jax.lax.dot_general(do_QxK, v_VxK, _CONTRACT_LAST, preferred_element_type=jnp.float32)
  return p_QxV, p_QxV * (dp_QxV - delta_Qx1)


def delta(do_QxK, o_QxK):
  """[Q, 1] rowsum(dO * O): the softmax-gradient correction of each query."""
  return jnp.sum(do_QxK.astype(jnp.float32) * o_QxK.astype(jnp.float32), axis=1, keepdims=True)


def dq_update(dq_QxK, ds_QxV, k_VxK, scale: float):
  return dq_QxK + scale * jnp.dot(
    ds_QxV.astype(k_VxK.dtype), k_VxK, preferred_element_type=jnp.float32
  )


def dkv_update(dk_VxK, dv_VxK, p_QxV, ds_QxV, q_QxK, do_QxK, scale: float):
  dv_VxK = dv_VxK + jnp.dot(
    p_QxV.T.astype(do_QxK.dtype), do_QxK, preferred_element_type=jnp.float32
  )
  dk_VxK = dk_VxK + scale * jnp.dot(
    ds_QxV.T.astype(q_QxK.dtype), q_QxK, preferred_element_type=jnp.float32
  )
  return dk_VxK, dv_VxK


@dataclasses.dataclass(frozen=True)
class Static:
  """Everything shape-like the kernels close over (hashable: part of the jit cache key)."""

  block_q: int
  block_kv: int
  kv_steps: int  # static bound on token kv blocks one q block visits
  q_steps: int  # static bound on q blocks one kv block is visited by (dkv's grid)
  num_tail_blocks: int
  scale: float
  interpret: bool
  backend: str  # "tpu" (Mosaic grid style) | "gpu" (Triton loop style)

  @property
  def mosaic(self) -> bool:
    """Compiled by Mosaic for TPU (its block tiling rules apply)."""
    return self.backend == "tpu" and not self.interpret
