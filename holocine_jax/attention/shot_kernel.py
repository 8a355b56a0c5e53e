"""Pallas block-sparse flash attention for HoloCine's inter-shot pattern (forward + backward).

KV = [all tokens ; every shot's summary tokens appended as a tail]. Query q sees token j iff both
are in the same shot, and every valid tail slot (its own summary twice, as released). A q block
visits only the kv blocks spanning its own shots (a contiguous range read from a per-batch block
table, scalar-prefetched) and then the tail blocks; no other block is loaded or computed. Partial
blocks at shot boundaries are masked token by token. The tables are traced values and the loop
lengths are static bounds from `ShotBatch.max_shot_frames`, so new cuts at the same shapes do not
recompile.

Written in the TPU (Mosaic) style: grid (B, H, q blocks, kv steps), scalar-prefetched tables,
VMEM scratch for the online softmax. On CPU it runs with `interpret=True`.

Legend: B batch, H heads, L tokens (Lp padded), G tail slots (Gp padded), K head dim,
Q / V q / kv block sizes, NQ / NV number of q / kv token blocks.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from holocine_jax.layout import ShotBatch

SUMMARY_ID = -1  # tail slot every query may see
INVALID_ID = -2  # padding: a tail slot of a missing shot, or a token past L
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Query / key-value block lengths (tokens) used by the forward and both backward kernels."""

  block_q: int = 512
  block_kv: int = 512

  def __post_init__(self):
    for name in ("block_q", "block_kv"):
      size = getattr(self, name)
      if not isinstance(size, int) or size <= 0 or size % 8:
        raise ValueError(f"{name} must be a positive multiple of 8, got {size!r}")


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything shape-like the kernels close over (hashable: part of the jit cache key)."""

  block_q: int
  block_kv: int
  kv_steps: int  # static bound on token kv blocks one q block visits
  q_steps: int  # static bound on q blocks one token kv block is visited by
  num_tail_blocks: int
  scale: float
  interpret: bool


def _cdiv(a: int, b: int) -> int:
  return -(-a // b)


def _ranges(shot_BxL, start_BxN, end_BxN, num_blocks, block, other_block):
  """For each block of `block` tokens: the [lo, lo+count) range of `other_block`-sized blocks
  covering the shots it touches (count 0 for blocks wholly past L)."""
  num_l = shot_BxL.shape[1]
  first = jnp.arange(num_blocks, dtype=jnp.int32) * block
  last = jnp.minimum(first + block, num_l) - 1
  real = first < num_l
  take = lambda x, idx: jnp.take_along_axis(x, jnp.broadcast_to(idx, (x.shape[0], idx.size)), 1)
  s0 = take(shot_BxL, jnp.minimum(first, num_l - 1))
  s1 = take(shot_BxL, jnp.maximum(last, 0))
  lo = jnp.take_along_axis(start_BxN, s0, 1) // other_block
  hi = -(-jnp.take_along_axis(end_BxN, s1, 1) // other_block)
  return jnp.where(real, lo, 0).astype(jnp.int32), jnp.where(real, hi - lo, 0).astype(jnp.int32)


def _span_bound(block: int, cap: int, other_block: int, num_other: int) -> int:
  """Most `other_block` blocks a `block`-token block's shots can span (shots <= cap tokens)."""
  return min(num_other, _cdiv(block + 2 * (cap - 1), other_block) + 1)


def _allowed(qid_ref, kvid_ref):
  """[Q, V] visibility from shot ids: same shot (real tokens) or a valid summary slot."""
  qid = qid_ref[...][:, None]
  kvid = kvid_ref[...][None, :]
  return ((qid == kvid) & (kvid >= 0)) | (kvid == SUMMARY_ID)


def _logits(q_ref, k_ref, scale):
  return (
    jax.lax.dot_general(
      q_ref[...], k_ref[...], (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
    )
    * scale
  )


def _fwd_kernel(
  lo_ref,
  cnt_ref,
  q_ref,
  k_ref,
  v_ref,
  qid_ref,
  kvid_ref,
  o_ref,
  lse_ref,
  m_scr,
  l_scr,
  acc_scr,
  *,
  st: _Static,
):
  b, i, s = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  num_steps = st.kv_steps + st.num_tail_blocks

  @pl.when(s == 0)
  def _init():
    m_scr[...] = jnp.full(m_scr.shape, MASK_VALUE, jnp.float32)
    l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
    acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

  @pl.when((s < cnt_ref[b, i]) | (s >= st.kv_steps))
  def _step():
    allowed_QxV = _allowed(qid_ref, kvid_ref)
    logits_QxV = jnp.where(allowed_QxV, _logits(q_ref, k_ref, st.scale), MASK_VALUE)
    m_prev_Qx1 = m_scr[...]
    m_new_Qx1 = jnp.maximum(m_prev_Qx1, logits_QxV.max(-1, keepdims=True))
    p_QxV = jnp.where(allowed_QxV, jnp.exp(logits_QxV - m_new_Qx1), 0.0)
    alpha_Qx1 = jnp.exp(m_prev_Qx1 - m_new_Qx1)
    l_scr[...] = alpha_Qx1 * l_scr[...] + p_QxV.sum(-1, keepdims=True)
    acc_scr[...] = alpha_Qx1 * acc_scr[...] + jnp.dot(
      p_QxV.astype(v_ref.dtype), v_ref[...], preferred_element_type=jnp.float32
    )
    m_scr[...] = m_new_Qx1

  @pl.when(s == num_steps - 1)
  def _finish():
    l_Qx1 = l_scr[...]
    safe_Qx1 = jnp.where(l_Qx1 == 0.0, 1.0, l_Qx1)
    o_ref[...] = (acc_scr[...] / safe_Qx1).astype(o_ref.dtype)
    lse_ref[...] = (m_scr[...] + jnp.log(safe_Qx1))[:, 0]


def _probs_and_dscores(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qid_ref, kvid_ref, scale):
  """Recomputed probabilities p and score gradients ds = p * (dO.V^T - delta), both [Q, V]."""
  logits_QxV = _logits(q_ref, k_ref, scale)
  p_QxV = jnp.where(_allowed(qid_ref, kvid_ref), jnp.exp(logits_QxV - lse_ref[...][:, None]), 0.0)
  dp_QxV = jax.lax.dot_general(
    do_ref[...], v_ref[...], (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
  )
  return p_QxV, p_QxV * (dp_QxV - delta_ref[...][:, None])


def _dq_kernel(
  lo_ref,
  cnt_ref,
  q_ref,
  k_ref,
  v_ref,
  do_ref,
  lse_ref,
  delta_ref,
  qid_ref,
  kvid_ref,
  dq_ref,
  dq_scr,
  *,
  st: _Static,
):
  b, i, s = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(s == 0)
  def _init():
    dq_scr[...] = jnp.zeros(dq_scr.shape, jnp.float32)

  @pl.when((s < cnt_ref[b, i]) | (s >= st.kv_steps))
  def _step():
    _, ds_QxV = _probs_and_dscores(
      q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qid_ref, kvid_ref, st.scale
    )
    dq_scr[...] += st.scale * jnp.dot(
      ds_QxV.astype(k_ref.dtype), k_ref[...], preferred_element_type=jnp.float32
    )

  @pl.when(s == st.kv_steps + st.num_tail_blocks - 1)
  def _finish():
    dq_ref[...] = dq_scr[...].astype(dq_ref.dtype)


def _dkv_kernel(
  lo_ref,
  cnt_ref,
  q_ref,
  k_ref,
  v_ref,
  do_ref,
  lse_ref,
  delta_ref,
  qid_ref,
  kvid_ref,
  dk_ref,
  dv_ref,
  dk_scr,
  dv_scr,
  *,
  st: _Static,
  steps: int,
):
  b, j, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(t == 0)
  def _init():
    dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
    dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

  @pl.when(t < cnt_ref[b, j])
  def _step():
    p_QxV, ds_QxV = _probs_and_dscores(
      q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qid_ref, kvid_ref, st.scale
    )
    contract_q = (((0,), (0,)), ((), ()))
    dv_scr[...] += jax.lax.dot_general(
      p_QxV.astype(do_ref.dtype), do_ref[...], contract_q, preferred_element_type=jnp.float32
    )
    dk_scr[...] += st.scale * jax.lax.dot_general(
      ds_QxV.astype(q_ref.dtype), q_ref[...], contract_q, preferred_element_type=jnp.float32
    )

  @pl.when(t == steps - 1)
  def _finish():
    dk_ref[...] = dk_scr[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def _q_major_specs(st: _Static, head_dim: int, num_token_blocks: int):
  """BlockSpecs on the (b, h, q block i, kv step s) grid of the forward and dq kernels."""

  def kv_block(b, i, s, lo_ref, cnt_ref):
    # Steps past a q block's range re-use its last block (no new copy) and skip compute.
    token = lo_ref[b, i] + jnp.minimum(s, jnp.maximum(cnt_ref[b, i] - 1, 0))
    return jnp.where(s < st.kv_steps, token, num_token_blocks + s - st.kv_steps)

  return dict(
    q=pl.BlockSpec((None, None, st.block_q, head_dim), lambda b, h, i, s, *_: (b, h, i, 0)),
    kv=pl.BlockSpec(
      (None, None, st.block_kv, head_dim), lambda b, h, i, s, *t: (b, h, kv_block(b, i, s, *t), 0)
    ),
    row=pl.BlockSpec((None, None, st.block_q), lambda b, h, i, s, *_: (b, h, i)),
    qid=pl.BlockSpec((None, st.block_q), lambda b, h, i, s, *_: (b, i)),
    kvid=pl.BlockSpec((None, st.block_kv), lambda b, h, i, s, *t: (b, kv_block(b, i, s, *t))),
  )


def _kv_major_specs(st: _Static, head_dim: int):
  """BlockSpecs on the (b, h, kv block j, q step t) grid of the dkv kernel."""

  def q_block(b, j, t, lo_ref, cnt_ref):
    return lo_ref[b, j] + jnp.minimum(t, jnp.maximum(cnt_ref[b, j] - 1, 0))

  return dict(
    q=pl.BlockSpec(
      (None, None, st.block_q, head_dim), lambda b, h, j, t, *r: (b, h, q_block(b, j, t, *r), 0)
    ),
    kv=pl.BlockSpec((None, None, st.block_kv, head_dim), lambda b, h, j, t, *_: (b, h, j, 0)),
    row=pl.BlockSpec((None, None, st.block_q), lambda b, h, j, t, *r: (b, h, q_block(b, j, t, *r))),
    qid=pl.BlockSpec((None, st.block_q), lambda b, h, j, t, *r: (b, q_block(b, j, t, *r))),
    kvid=pl.BlockSpec((None, st.block_kv), lambda b, h, j, t, *_: (b, j)),
  )


def _call(kernel, grid, in_specs, out_specs, scratch, out_shape, st: _Static):
  """pallas_call with two scalar-prefetched block tables; the last grid axis accumulates."""
  return pl.pallas_call(
    kernel,
    grid_spec=pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=grid,
      in_specs=in_specs,
      out_specs=out_specs,
      scratch_shapes=scratch,
    ),
    out_shape=out_shape,
    compiler_params=pltpu.CompilerParams(
      dimension_semantics=("parallel",) * (len(grid) - 1) + ("arbitrary",)
    ),
    interpret=st.interpret,
  )


def _forward(q, k, v, qid, kvid, lo, cnt, st: _Static):
  b, h, lp, d = q.shape
  sp = _q_major_specs(st, d, lp // st.block_kv)
  return _call(
    functools.partial(_fwd_kernel, st=st),
    (b, h, lp // st.block_q, st.kv_steps + st.num_tail_blocks),
    [sp["q"], sp["kv"], sp["kv"], sp["qid"], sp["kvid"]],
    [sp["q"], sp["row"]],
    [
      pltpu.VMEM((st.block_q, 1), jnp.float32),
      pltpu.VMEM((st.block_q, 1), jnp.float32),
      pltpu.VMEM((st.block_q, d), jnp.float32),
    ],
    [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, lp), jnp.float32)],
    st,
  )(lo, cnt, q, k, v, qid, kvid)


def _dq(q, k, v, do, lse, delta, qid, kvid, lo, cnt, st: _Static):
  b, h, lp, d = q.shape
  sp = _q_major_specs(st, d, lp // st.block_kv)
  return _call(
    functools.partial(_dq_kernel, st=st),
    (b, h, lp // st.block_q, st.kv_steps + st.num_tail_blocks),
    [sp["q"], sp["kv"], sp["kv"], sp["q"], sp["row"], sp["row"], sp["qid"], sp["kvid"]],
    sp["q"],
    [pltpu.VMEM((st.block_q, d), jnp.float32)],
    jax.ShapeDtypeStruct(q.shape, q.dtype),
    st,
  )(lo, cnt, q, k, v, do, lse, delta, qid, kvid)


def _dkv(q, k, v, do, lse, delta, qid, kvid, q_lo, q_cnt, steps: int, st: _Static):
  """dk, dv for the kv blocks of `k` / `v` (token part or tail), each visiting q blocks
  [q_lo, q_lo + q_cnt) of at most `steps`."""
  b, h, _, d = q.shape
  sp = _kv_major_specs(st, d)
  return _call(
    functools.partial(_dkv_kernel, st=st, steps=steps),
    (b, h, k.shape[2] // st.block_kv, steps),
    [sp["q"], sp["kv"], sp["kv"], sp["q"], sp["row"], sp["row"], sp["qid"], sp["kvid"]],
    [sp["kv"], sp["kv"]],
    [pltpu.VMEM((st.block_kv, d), jnp.float32)] * 2,
    [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    st,
  )(q_lo, q_cnt, q, k, v, do, lse, delta, qid, kvid)


@functools.partial(jax.custom_vjp, nondiff_argnums=(9,))
def _flash(q, k, v, qid, kvid, lo, cnt, q_lo, q_cnt, st: _Static):
  return _forward(q, k, v, qid, kvid, lo, cnt, st)[0]


def _flash_fwd(q, k, v, qid, kvid, lo, cnt, q_lo, q_cnt, st):
  o, lse = _forward(q, k, v, qid, kvid, lo, cnt, st)
  return o, (q, k, v, qid, kvid, lo, cnt, q_lo, q_cnt, o, lse)


def _flash_bwd(st, res, do):
  q, k, v, qid, kvid, lo, cnt, q_lo, q_cnt, o, lse = res
  b, _, lp, _ = q.shape
  delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)
  dq = _dq(q, k, v, do, lse, delta, qid, kvid, lo, cnt, st)
  nq = lp // st.block_q
  dk_tok, dv_tok = _dkv(
    q, k[:, :, :lp], v[:, :, :lp], do, lse, delta, qid, kvid[:, :lp], q_lo, q_cnt, st.q_steps, st
  )
  if not st.num_tail_blocks:
    return dq, dk_tok, dv_tok, None, None, None, None, None, None
  tail = jnp.zeros((b, st.num_tail_blocks), jnp.int32)
  dk_tail, dv_tail = _dkv(
    q, k[:, :, lp:], v[:, :, lp:], do, lse, delta, qid, kvid[:, lp:], tail, tail + nq, nq, st
  )
  dk = jnp.concatenate([dk_tok, dk_tail], axis=2)
  dv = jnp.concatenate([dv_tok, dv_tail], axis=2)
  return dq, dk, dv, None, None, None, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _check(q, k, v, shots: ShotBatch):
  if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
    raise ValueError(f"q, k, v must all be [B, L, H, K], got {q.shape}, {k.shape}, {v.shape}")
  for name, x in (("q", q), ("k", k), ("v", v)):
    if x.dtype not in (jnp.float32, jnp.bfloat16):
      raise ValueError(f"{name} must be float32 or bfloat16, got {x.dtype}")
  if q.shape[-1] > 256:
    raise ValueError(f"head_dim must be <= 256, got {q.shape[-1]}")
  if shots.shot_id_BxL.shape != q.shape[:2]:
    raise ValueError(
      f"shots describe [B, L] = {shots.shot_id_BxL.shape} but q is {q.shape[:2]} tokens"
    )


@functools.partial(jax.jit, static_argnames=("block_sizes", "interpret"))
def shot_attention(
  q_BxLxHxK,
  k_BxLxHxK,
  v_BxLxHxK,
  shots: ShotBatch,
  block_sizes: BlockSizes = BlockSizes(),
  interpret: bool = False,
):
  """HoloCine sparse self-attention with the block-sparse Pallas kernel; same result as
  reference.sparse_shot_attention. Differentiable (Pallas backward kernels). With
  `layout.dense_batch` it is plain flash attention."""
  _check(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, shots)
  b, num_l, _, d = q_BxLxHxK.shape
  bq, bk = block_sizes.block_q, block_sizes.block_kv
  lp = _cdiv(num_l, math.lcm(bq, bk)) * math.lcm(bq, bk)
  g = shots.summary_idx_BxG.shape[1]
  gp = _cdiv(g, bk) * bk
  cap = shots.max_shot_tokens
  st = _Static(
    block_q=bq,
    block_kv=bk,
    kv_steps=_span_bound(bq, cap, bk, lp // bk),
    q_steps=_span_bound(bk, cap, bq, lp // bq),
    num_tail_blocks=gp // bk,
    scale=d**-0.5,
    interpret=interpret,
  )

  def heads_major(x_BxLxHxK, length):
    x = jnp.pad(x_BxLxHxK, ((0, 0), (0, length - x_BxLxHxK.shape[1]), (0, 0), (0, 0)))
    return x.transpose(0, 2, 1, 3)

  def with_tail(x_BxLxHxK):
    tail_BxGxHxK = jnp.take_along_axis(x_BxLxHxK, shots.summary_idx_BxG[:, :, None, None], 1)
    return jnp.concatenate([heads_major(x_BxLxHxK, lp), heads_major(tail_BxGxHxK, gp)], axis=2)

  shot_BxL = shots.shot_id_BxL.astype(jnp.int32)
  qid = jnp.pad(shot_BxL, ((0, 0), (0, lp - num_l)), constant_values=INVALID_ID)
  tail_id = jnp.where(shots.summary_valid_BxG, SUMMARY_ID, INVALID_ID).astype(jnp.int32)
  kvid = jnp.concatenate(
    [qid, jnp.pad(tail_id, ((0, 0), (0, gp - g)), constant_values=INVALID_ID)], axis=1
  )
  start_BxN, end_BxN = shots.shot_bounds_BxNx2[..., 0], shots.shot_bounds_BxNx2[..., 1]
  lo, cnt = _ranges(shot_BxL, start_BxN, end_BxN, lp // bq, bq, bk)
  q_lo, q_cnt = _ranges(shot_BxL, start_BxN, end_BxN, lp // bk, bk, bq)
  out = _flash(
    heads_major(q_BxLxHxK, lp),
    with_tail(k_BxLxHxK),
    with_tail(v_BxLxHxK),
    qid,
    kvid,
    lo,
    cnt,
    q_lo,
    q_cnt,
    st,
  )
  return out.transpose(0, 2, 1, 3)[:, :num_l]


def visited_blocks(shots: ShotBatch, block_sizes: BlockSizes = BlockSizes()) -> tuple[int, int]:
  """(kv blocks the forward kernel computes, kv blocks dense attention would) for benchmarks."""
  b, num_l = shots.shot_id_BxL.shape
  bq, bk = block_sizes.block_q, block_sizes.block_kv
  lp = _cdiv(num_l, math.lcm(bq, bk)) * math.lcm(bq, bk)
  gp = _cdiv(shots.summary_idx_BxG.shape[1], bk) * bk
  _, cnt = _ranges(
    shots.shot_id_BxL,
    shots.shot_bounds_BxNx2[..., 0],
    shots.shot_bounds_BxNx2[..., 1],
    lp // bq,
    bq,
    bk,
  )
  real_q_blocks = _cdiv(num_l, bq)
  visited = int(cnt.sum()) + b * real_q_blocks * (gp // bk)
  return visited, b * real_q_blocks * _cdiv(num_l, bk)
