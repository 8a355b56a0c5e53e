"""Pallas block-sparse flash attention for HoloCine's inter-shot pattern (forward + backward).

KV = [all tokens ; every shot's summary tokens appended as a tail]. Query q sees token j iff both
are in the same shot, and every valid tail slot (its own summary twice, as released). A q block
visits only the kv blocks spanning its own shots (a contiguous range read from a per-batch block
table) and then the tail blocks; no other block is loaded or computed. Partial blocks at shot
boundaries are masked token by token. The tables are traced values and loop bounds are static
bounds from `ShotBatch.max_shot_frames`, so new cuts at the same shapes do not recompile.

Operands stay token-major [B, L, H, K] (each kernel reads a head's [block, K] tiles in place),
so no [B, H, L, K] transposes of q, k, v, out or their gradients are ever materialised.

This file holds the layout-to-table logic, the padding rule, the custom_vjp and the checked,
jitted entry point; `shot_kernel_tpu` (Mosaic grid style; also what CPU interpret mode runs by
default) and `shot_kernel_gpu` (Triton loop style) hold the pallas_calls, each providing the
`Backend` protocol's forward / dq / dkv; `shot_math` the block math.

Legend: B batch, H heads, L tokens (Lp padded), G tail slots (Gp padded), K head dim.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Protocol

import jax
import jax.numpy as jnp

from holocine_jax.attention import reference, shot_kernel_gpu, shot_kernel_tpu, target
from holocine_jax.attention import shot_math as sm
from holocine_jax.layout import ShotBatch


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


def _cdiv(a: int, b: int) -> int:
  return -(-a // b)


def _ranges(shot_BxL, start_BxN, end_BxN, num_blocks, block, other_block):
  """For each block of `block` tokens: the [lo, lo+count) range of `other_block`-sized blocks
  covering the shots it touches (count 0 for blocks wholly past the real tokens)."""
  num_real_Bx1 = jnp.sum(shot_BxL >= 0, axis=1, keepdims=True)  # padding is a suffix
  first_1xN = jnp.arange(num_blocks, dtype=jnp.int32)[None] * block
  last = jnp.minimum(first_1xN + block, num_real_Bx1) - 1
  real = first_1xN < num_real_Bx1
  s0 = jnp.take_along_axis(shot_BxL, jnp.minimum(first_1xN, num_real_Bx1 - 1), 1)
  s1 = jnp.take_along_axis(shot_BxL, jnp.maximum(last, 0), 1)
  lo = jnp.take_along_axis(start_BxN, s0, 1) // other_block
  hi = -(-jnp.take_along_axis(end_BxN, s1, 1) // other_block)
  return jnp.where(real, lo, 0).astype(jnp.int32), jnp.where(real, hi - lo, 0).astype(jnp.int32)


def _span_bound(block: int, cap: int, other_block: int, num_other: int) -> int:
  """Most `other_block` blocks a `block`-token block's shots can span (shots <= cap tokens)."""
  return min(num_other, _cdiv(block + 2 * (cap - 1), other_block) + 1)


class Backend(Protocol):
  """The pallas_calls of one kernel style (the modules `shot_kernel_tpu`, `shot_kernel_gpu`).

  q-side operands are [B, Lp, H, K] (Lp tokens padded to whole blocks); k, v are [B, Lk, H, K]
  with Lk = Lp + the padded tail (forward, dq) or one kind of kv block only (dkv). `lo`, `cnt`
  [B, blocks] are the block tables (`_ranges`); `st` holds the static block sizes and bounds.
  """

  def forward(self, q, k, v, ids, lo, cnt, st: sm.Static) -> tuple[jax.Array, jax.Array]:
    """(out [B, Lp, H, K], lse [B, H, Lp]); `ids` [B, Lk] are the kv shot ids (q ids lead)."""
    ...

  def dq(self, q, k, v, do, o, lse, ids, lo, cnt, st: sm.Static) -> tuple[jax.Array, jax.Array]:
    """(dq [B, Lp, H, K], delta [B, H, Lp]): delta = rowsum(dO * O) is made here for `dkv`."""
    ...

  def dkv(
    self, q, k, v, do, lse, delta, qids, kvids, q_lo, q_cnt, st: sm.Static
  ) -> tuple[jax.Array, jax.Array]:
    """(dk, dv) for the kv blocks of `k` / `v` (shot ids `kvids` [B, Lk]), each visiting q blocks
    [q_lo, q_lo + q_cnt) (q shot ids `qids` [B, Lp]), at most `st.q_steps` of them."""
    ...


_BACKENDS: dict[str, Backend] = {"tpu": shot_kernel_tpu, "gpu": shot_kernel_gpu}


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _flash(q, k, v, ids, lo, cnt, q_lo, q_cnt, st: sm.Static):
  return _BACKENDS[st.backend].forward(q, k, v, ids, lo, cnt, st)[0]


def _flash_fwd(q, k, v, ids, lo, cnt, q_lo, q_cnt, st):
  o, lse = _BACKENDS[st.backend].forward(q, k, v, ids, lo, cnt, st)
  return o, (q, k, v, ids, lo, cnt, q_lo, q_cnt, o, lse)


def _flash_bwd(st, res, do):
  q, k, v, ids, lo, cnt, q_lo, q_cnt, o, lse = res
  kernels = _BACKENDS[st.backend]
  b, lp, _, _ = q.shape
  dq, delta = kernels.dq(q, k, v, do, o, lse, ids, lo, cnt, st)
  nq = lp // st.block_q
  qids = ids[:, :lp]
  dk_tok, dv_tok = kernels.dkv(q, k[:, :lp], v[:, :lp], do, lse, delta, qids, qids, q_lo, q_cnt, st)
  if not st.num_tail_blocks:
    return dq, dk_tok, dv_tok, None, None, None, None, None
  tail = jnp.zeros((b, st.num_tail_blocks), jnp.int32)
  every_q = dataclasses.replace(st, q_steps=nq)  # every q block sees every summary
  dk_tail, dv_tail = kernels.dkv(
    q, k[:, lp:], v[:, lp:], do, lse, delta, qids, ids[:, lp:], tail, tail + nq, every_q
  )
  dk = jnp.concatenate([dk_tok, dk_tail], axis=1)
  dv = jnp.concatenate([dv_tok, dv_tail], axis=1)
  return dq, dk, dv, None, None, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _check(q, k, v, shots: ShotBatch, block_sizes: BlockSizes, interpret: bool, backend: str):
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
  if backend not in _BACKENDS:
    raise ValueError(f"unknown kernel backend {backend!r}, expected one of {sorted(_BACKENDS)}")
  lanes, mosaic = shot_kernel_tpu.LANES, backend == "tpu" and not interpret
  if mosaic and (block_sizes.block_q % lanes or block_sizes.block_kv % lanes):
    raise ValueError(f"the TPU kernel needs blocks that are multiples of {lanes}: {block_sizes}")


def shot_attention(
  q_BxLxHxK,
  k_BxLxHxK,
  v_BxLxHxK,
  shots: ShotBatch,
  block_sizes: BlockSizes = BlockSizes(),
  interpret: bool | None = None,
  backend: str | None = None,
):
  """HoloCine sparse self-attention with the block-sparse Pallas kernel; same result as
  reference.sparse_shot_attention. Differentiable (Pallas backward kernels). With
  `layout.dense_batch` it is plain flash attention. `backend` picks the kernel style: "tpu"
  (Mosaic grid; blocks must be multiples of 128) or "gpu" (Triton loops; blocks are capped at
  128); `interpret` runs Pallas interpret mode. Both default from the platform compiled for
  (`target.platform()`: the mesh in context, else the host)."""
  return _shot_attention(
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, shots, block_sizes, *_style(interpret, backend)
  )


def _style(interpret: bool | None, backend: str | None) -> tuple[bool, str]:
  """(interpret, backend), each defaulting from the platform compiled for."""
  where = target.platform()
  return (
    where == "cpu" if interpret is None else interpret,
    ("gpu" if where == "gpu" else "tpu") if backend is None else backend,
  )


def _padding(num_l: int, g: int, block_sizes: BlockSizes, interpret: bool, backend: str):
  """(block_q, block_kv, Lp, Gp): the block sizes that run (capped for compiled GPU kernels)
  and the token / tail lengths padded to whole blocks."""
  bq, bk = block_sizes.block_q, block_sizes.block_kv
  if backend == "gpu" and not interpret:
    bq, bk = min(bq, shot_kernel_gpu.MAX_BLOCK), min(bk, shot_kernel_gpu.MAX_BLOCK)
  lp = _cdiv(num_l, math.lcm(bq, bk)) * math.lcm(bq, bk)
  return bq, bk, lp, _cdiv(g, bk) * bk


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _shot_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, shots, block_sizes, interpret, backend):
  """`shot_attention` with every static choice made (so each lands in the jit cache key)."""
  _check(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, shots, block_sizes, interpret, backend)
  b, num_l, _, d = q_BxLxHxK.shape
  g = shots.summary_idx_BxG.shape[1]
  bq, bk, lp, gp = _padding(num_l, g, block_sizes, interpret, backend)
  cap = shots.max_shot_tokens
  st = sm.Static(
    block_q=bq,
    block_kv=bk,
    kv_steps=_span_bound(bq, cap, bk, lp // bk),
    q_steps=_span_bound(bk, cap, bq, lp // bq),
    num_tail_blocks=gp // bk,
    scale=d**-0.5,
    interpret=interpret,
    backend=backend,
  )

  # Mosaic reads a head as a [block, K] column block of [B, L, H*K]: K must fill whole lanes.
  # Zero head-dim padding changes no score (the scale above keeps the true K) and no output.
  dp = _cdiv(d, shot_kernel_tpu.LANES) * shot_kernel_tpu.LANES if st.mosaic else d

  def padded(x_BxLxHxK, length):
    pad_l = length - x_BxLxHxK.shape[1]
    return jnp.pad(x_BxLxHxK, ((0, 0), (0, pad_l), (0, 0), (0, dp - d)))

  def with_tail(x_BxLxHxK):
    tail_BxGxHxK = reference.summaries(x_BxLxHxK, shots)
    return jnp.concatenate([padded(x_BxLxHxK, lp), padded(tail_BxGxHxK, gp)], axis=1)

  shot_BxL = shots.shot_id_BxL.astype(jnp.int32)
  tail_id = jnp.where(shots.summary_valid_BxG, sm.SUMMARY_ID, sm.INVALID_ID).astype(jnp.int32)
  ids = jnp.concatenate(
    [
      jnp.pad(shot_BxL, ((0, 0), (0, lp - num_l)), constant_values=sm.INVALID_ID),
      jnp.pad(tail_id, ((0, 0), (0, gp - g)), constant_values=sm.INVALID_ID),
    ],
    axis=1,
  )
  start_BxN, end_BxN = shots.shot_bounds_BxNx2[..., 0], shots.shot_bounds_BxNx2[..., 1]
  lo, cnt = _ranges(shot_BxL, start_BxN, end_BxN, lp // bq, bq, bk)
  q_lo, q_cnt = _ranges(shot_BxL, start_BxN, end_BxN, lp // bk, bk, bq)
  out_BxLpxHxK = _flash(
    padded(q_BxLxHxK, lp),
    with_tail(k_BxLxHxK),
    with_tail(v_BxLxHxK),
    ids,
    lo,
    cnt,
    q_lo,
    q_cnt,
    st,
  )
  return out_BxLpxHxK[:, :num_l, :, :d]


def visited_blocks(
  shots: ShotBatch,
  block_sizes: BlockSizes = BlockSizes(),
  interpret: bool | None = None,
  backend: str | None = None,
) -> tuple[int, int]:
  """(kv blocks the forward kernel computes, kv blocks dense attention would) for benchmarks,
  at the block sizes `shot_attention` runs with the same arguments."""
  b, num_l = shots.shot_id_BxL.shape
  g = shots.summary_idx_BxG.shape[1]
  bq, bk, lp, gp = _padding(num_l, g, block_sizes, *_style(interpret, backend))
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
