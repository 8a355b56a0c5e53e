"""GPU (Triton) style pallas_calls of the shot kernel: grid (B, H, blocks), loops inside.

Each program owns one q block (forward, dq) or kv block (dkv) and loops with `fori_loop` over
exactly its table range, then over the summary tail: work is proportional to the visited blocks.
The opposite operand is addressed as a whole sequence and sliced per step with `pl.ds`.
Operands are token-major [B, L, H, K] (blocks squeeze the head). Per-query values are [.., Lp, 1]
columns and kv shot ids a [B, 1, Lk] row, so the shared block math sees the same 2D shapes as on
TPU. Lowered through Triton, as the compiler params ask (jax's default GPU lowering, Mosaic GPU,
would stage the whole-sequence operands in shared memory: 2 MB, which does not fit).
Legend: B batch, H heads, Lp padded tokens, Lk kv length, K head dim.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from holocine_jax.attention import shot_math as sm

MAX_BLOCK = 128  # a Triton program holds a [block_q, block_kv] fp32 tile in registers


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
  o_ref,
  lse_ref,
  qid_ref,
  kvid_ref,
  dq_ref,
  delta_ref,
  *,
  st: sm.Static,
  num_token_blocks: int,
):
  i = pl.program_id(2)
  q, do, lse, qid = q_ref[...], do_ref[...], lse_ref[...], qid_ref[...]
  delta = sm.delta(do, o_ref[...])

  def visit(block, dq_QxK):
    kv = pl.ds(block * st.block_kv, st.block_kv)
    k = k_ref[kv, :]
    _, ds = sm.probs_and_dscores(q, k, v_ref[kv, :], do, lse, delta, qid, kvid_ref[:, kv], st.scale)
    return sm.dq_update(dq_QxK, ds, k, st.scale)

  dq_QxK = jnp.zeros(q.shape, jnp.float32)
  dq_QxK = jax.lax.fori_loop(lo_ref[i], lo_ref[i] + cnt_ref[i], visit, dq_QxK)
  dq_QxK = jax.lax.fori_loop(num_token_blocks, num_token_blocks + st.num_tail_blocks, visit, dq_QxK)
  dq_ref[...] = dq_QxK.astype(dq_ref.dtype)
  delta_ref[...] = delta


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


def _call(kernel, grid, in_specs, out_specs, out_shape, st: sm.Static, head_dim: int):
  """pallas_call lowered through Triton (warps as jax's GPU flash attention picks them)."""
  return pl.pallas_call(
    kernel,
    grid=grid,
    in_specs=in_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    compiler_params=pltriton.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2),
    interpret=st.interpret,
  )


def _table(n: int):
  return pl.BlockSpec((None, n), lambda b, h, i: (b, 0))


def _blocks(rows: int, head_dim: int):
  """This program's block of `rows` tokens of one head of a [B, L, H, K] operand."""
  return pl.BlockSpec((None, rows, None, head_dim), lambda b, h, i: (b, i, h, 0))


def _whole(length: int, head_dim: int):
  """The whole sequence of one (batch, head) of a [B, L, H, K] operand, sliced in the kernel."""
  return pl.BlockSpec((None, length, None, head_dim), lambda b, h, i: (b, 0, h, 0))


def _stats(rows: int, whole: bool = False):
  """This program's [rows, 1] column of a per-head statistic [B, H, L, 1], or the whole one."""
  return pl.BlockSpec((None, None, rows, 1), lambda b, h, i: (b, h, 0 if whole else i, 0))


def _q_ids(rows: int, whole: bool = False):
  """This program's [rows, 1] column of the q shot ids [B, L, 1], or the whole one."""
  return pl.BlockSpec((None, rows, 1), lambda b, h, i: (b, 0 if whole else i, 0))


def _kv_ids(cols: int, whole: bool = False):
  """This program's [1, cols] row of the kv shot ids [B, 1, Lk], or the whole one."""
  return pl.BlockSpec((None, 1, cols), lambda b, h, i: (b, 0, 0 if whole else i))


def forward(q, k, v, ids, lo, cnt, st: sm.Static):
  """(out [B, Lp, H, K], lse [B, H, Lp]); `ids` [B, Lk] are the kv shot ids (q ids lead)."""
  b, lp, h, d = q.shape
  nq, lk = lp // st.block_q, k.shape[1]
  out, lse = _call(
    functools.partial(_fwd_kernel, st=st, num_token_blocks=lp // st.block_kv),
    (b, h, nq),
    [
      _table(nq),
      _table(nq),
      _blocks(st.block_q, d),
      _whole(lk, d),
      _whole(lk, d),
      _q_ids(st.block_q),
      _kv_ids(lk, whole=True),
    ],
    [_blocks(st.block_q, d), _stats(st.block_q)],
    [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, lp, 1), jnp.float32)],
    st,
    d,
  )(lo, cnt, q, k, v, sm.columns(ids[:, :lp]), sm.rows(ids))
  return out, lse[..., 0]


def dq(q, k, v, do, o, lse, ids, lo, cnt, st: sm.Static):
  """(dq [B, Lp, H, K], delta [B, H, Lp]): delta = rowsum(dO * O) is made here for `dkv`."""
  b, lp, h, d = q.shape
  nq, lk = lp // st.block_q, k.shape[1]
  dq, delta = _call(
    functools.partial(_dq_kernel, st=st, num_token_blocks=lp // st.block_kv),
    (b, h, nq),
    [
      _table(nq),
      _table(nq),
      _blocks(st.block_q, d),
      _whole(lk, d),
      _whole(lk, d),
      _blocks(st.block_q, d),
      _blocks(st.block_q, d),
      _stats(st.block_q),
      _q_ids(st.block_q),
      _kv_ids(lk, whole=True),
    ],
    [_blocks(st.block_q, d), _stats(st.block_q)],
    [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, lp, 1), jnp.float32)],
    st,
    d,
  )(lo, cnt, q, k, v, do, o, sm.columns(lse), sm.columns(ids[:, :lp]), sm.rows(ids))
  return dq, delta[..., 0]


def dkv(q, k, v, do, lse, delta, qids, kvids, q_lo, q_cnt, st: sm.Static):
  """dk, dv for the kv blocks of `k` / `v` (shot ids `kvids` [B, Lk]), each looping over q blocks
  [q_lo, q_lo + q_cnt) (q shot ids `qids` [B, Lp]); loops run exactly that range."""
  b, lp, h, d = q.shape
  nk = k.shape[1] // st.block_kv
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
      _stats(lp, whole=True),
      _stats(lp, whole=True),
      _q_ids(lp, whole=True),
      _kv_ids(st.block_kv),
    ],
    [_blocks(st.block_kv, d), _blocks(st.block_kv, d)],
    [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    st,
    d,
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
