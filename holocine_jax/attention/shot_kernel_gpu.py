"""GPU (Triton) style pallas_calls of the shot kernel: grid (B, H, blocks), loops inside.

Each program owns one q block (forward, dq) or kv block (dkv) and loops with `fori_loop` over
exactly its table range, then over the summary tail: work is proportional to the visited blocks.
The opposite operand is addressed as a whole sequence and sliced per step with `pl.ds`.
Per-query values are [.., Lp, 1] columns and kv shot ids a [B, 1, Lk] row, so the shared block
math sees the same 2D shapes as on TPU. Lowered through Triton (its compiler params say so; jax's
default GPU lowering, Mosaic GPU, would stage the whole-sequence operands in shared memory).
Legend: B batch, H heads, Lp padded tokens, Lk kv length, K head dim.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from holocine_jax.attention import shot_math as sm


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
  *,
  st: sm.Static,
  num_token_blocks: int,
):
  i = pl.program_id(2)
  q, qid = q_ref[...], qid_ref[...]

  def visit(block, state):
    kv = pl.ds(block * st.block_kv, st.block_kv)
    return sm.online_update(state, q, k_ref[kv, :], v_ref[kv, :], qid, kvid_ref[:, kv], st.scale)

  state = sm.init_state(st.block_q, q.shape[-1])
  state = jax.lax.fori_loop(lo_ref[i], lo_ref[i] + cnt_ref[i], visit, state)
  state = jax.lax.fori_loop(num_token_blocks, num_token_blocks + st.num_tail_blocks, visit, state)
  out, lse_ref[...] = sm.finish(state)
  o_ref[...] = out.astype(o_ref.dtype)


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
  *,
  st: sm.Static,
  num_token_blocks: int,
):
  i = pl.program_id(2)
  q, do, lse, delta, qid = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...], qid_ref[...]

  def visit(block, dq_QxK):
    kv = pl.ds(block * st.block_kv, st.block_kv)
    k = k_ref[kv, :]
    _, ds = sm.probs_and_dscores(q, k, v_ref[kv, :], do, lse, delta, qid, kvid_ref[:, kv], st.scale)
    return sm.dq_update(dq_QxK, ds, k, st.scale)

  dq_QxK = jnp.zeros(q.shape, jnp.float32)
  dq_QxK = jax.lax.fori_loop(lo_ref[i], lo_ref[i] + cnt_ref[i], visit, dq_QxK)
  dq_QxK = jax.lax.fori_loop(num_token_blocks, num_token_blocks + st.num_tail_blocks, visit, dq_QxK)
  dq_ref[...] = dq_QxK.astype(dq_ref.dtype)


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
  *,
  st: sm.Static,
):
  j = pl.program_id(2)
  k, v, kvid = k_ref[...], v_ref[...], kvid_ref[...]

  def visit(block, grads):
    rows = pl.ds(block * st.block_q, st.block_q)
    q, do = q_ref[rows, :], do_ref[rows, :]
    p, ds = sm.probs_and_dscores(
      q, k, v, do, lse_ref[rows, :], delta_ref[rows, :], qid_ref[rows, :], kvid, st.scale
    )
    return sm.dkv_update(*grads, p, ds, q, do, st.scale)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(lo_ref[j], lo_ref[j] + cnt_ref[j], visit, (zeros, zeros))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _call(kernel, grid, in_specs, out_specs, out_shape, st: sm.Static):
  return pl.pallas_call(
    kernel,
    grid=grid,
    in_specs=in_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
    interpret=st.interpret,
  )


def _table(n: int):
  return pl.BlockSpec((None, n), lambda b, h, i: (b, 0))


def _blocks(rows: int, width: int, per_head: bool = True):
  """This program's block of `rows` tokens, `width` wide (head dim, or 1 for ids / statistics)."""
  if per_head:
    return pl.BlockSpec((None, None, rows, width), lambda b, h, i: (b, h, i, 0))
  return pl.BlockSpec((None, rows, width), lambda b, h, i: (b, i, 0))


def _whole(length: int, width: int, per_head: bool = True):
  """The whole sequence of one (batch, head), `width` wide, sliced inside the kernel."""
  if per_head:
    return pl.BlockSpec((None, None, length, width), lambda b, h, i: (b, h, 0, 0))
  return pl.BlockSpec((None, length, width), lambda b, h, i: (b, 0, 0))


def _kv_row(length: int):
  """The kv shot ids of one batch element as a [1, Lk] row, sliced inside the kernel."""
  return pl.BlockSpec((None, 1, length), lambda b, h, i: (b, 0, 0))


def forward(q, k, v, ids, lo, cnt, st: sm.Static):
  """(out [B, H, Lp, K], lse [B, H, Lp]); `ids` [B, Lk] are the kv shot ids (q ids lead)."""
  b, h, lp, d = q.shape
  nq, lk = lp // st.block_q, k.shape[2]
  out, lse = _call(
    functools.partial(_fwd_kernel, st=st, num_token_blocks=lp // st.block_kv),
    (b, h, nq),
    [
      _table(nq),
      _table(nq),
      _blocks(st.block_q, d),
      _whole(lk, d),
      _whole(lk, d),
      _blocks(st.block_q, 1, per_head=False),
      _kv_row(lk),
    ],
    [_blocks(st.block_q, d), _blocks(st.block_q, 1)],
    [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, lp, 1), jnp.float32)],
    st,
  )(lo, cnt, q, k, v, sm.columns(ids[:, :lp]), sm.rows(ids))
  return out, lse[..., 0]


def dq(q, k, v, do, lse, delta, ids, lo, cnt, st: sm.Static):
  b, h, lp, d = q.shape
  nq, lk = lp // st.block_q, k.shape[2]
  return _call(
    functools.partial(_dq_kernel, st=st, num_token_blocks=lp // st.block_kv),
    (b, h, nq),
    [
      _table(nq),
      _table(nq),
      _blocks(st.block_q, d),
      _whole(lk, d),
      _whole(lk, d),
      _blocks(st.block_q, d),
      _blocks(st.block_q, 1),
      _blocks(st.block_q, 1),
      _blocks(st.block_q, 1, per_head=False),
      _kv_row(lk),
    ],
    _blocks(st.block_q, d),
    jax.ShapeDtypeStruct(q.shape, q.dtype),
    st,
  )(
    lo,
    cnt,
    q,
    k,
    v,
    do,
    sm.columns(lse),
    sm.columns(delta),
    sm.columns(ids[:, :lp]),
    sm.rows(ids),
  )


def dkv(q, k, v, do, lse, delta, qids, kvids, q_lo, q_cnt, steps: int, st: sm.Static):
  """dk, dv for the kv blocks of `k` / `v` (shot ids `kvids` [B, Lk]), each looping over q blocks
  [q_lo, q_lo + q_cnt) (q shot ids `qids` [B, Lp])."""
  del steps  # loops run exactly the table range
  b, h, lp, d = q.shape
  nk = k.shape[2] // st.block_kv
  return _call(
    functools.partial(_dkv_kernel, st=st),
    (b, h, nk),
    [
      _table(nk),
      _table(nk),
      _whole(lp, d),
      _blocks(st.block_kv, d),
      _blocks(st.block_kv, d),
      _whole(lp, d),
      _whole(lp, 1),
      _whole(lp, 1),
      _whole(lp, 1, per_head=False),
      pl.BlockSpec((None, 1, st.block_kv), lambda b, h, j: (b, 0, j)),
    ],
    [_blocks(st.block_kv, d), _blocks(st.block_kv, d)],
    [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    st,
  )(
    q_lo,
    q_cnt,
    q,
    k,
    v,
    do,
    sm.columns(lse),
    sm.columns(delta),
    sm.columns(qids),
    sm.rows(kvids),
  )
