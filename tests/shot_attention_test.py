"""Sparse shot attention: Pallas kernel (interpret mode, and TPU-faithful interpret mode for the
Mosaic-style kernel) and XLA packed path vs the dense reference, outputs and gradients, over a
grid of layouts; no recompilation on new cuts; sharded kernel under shard_map."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from holocine_jax import attention, layout, sharding
from holocine_jax.attention import (
  chunked,
  packed,
  reference,
  shot_kernel,
  shot_kernel_gpu,
  shot_kernel_tpu,
)
from holocine_jax.layout import ShotLayout

PER_FRAME = 5  # with 8-token blocks, most shot boundaries fall inside a block
BLOCKS = shot_kernel.BlockSizes(block_q=8, block_kv=8)
LAYOUTS = {
  "one_shot": [(0, 6)],
  "two_equal": [(0, 3, 6)],
  "five_uneven": [(0, 1, 3, 4, 7, 9)],
  "inside_blocks": [(0, 2, 6)],
  "batch_mixed": [(0, 2, 3, 6), (0, 1, 6)],
}
IMPLS = {
  "kernel_tpu": lambda q, k, v, s: shot_kernel.shot_attention(q, k, v, s, BLOCKS, True, "tpu"),
  "kernel_gpu": lambda q, k, v, s: shot_kernel.shot_attention(q, k, v, s, BLOCKS, True, "gpu"),
  "packed": packed.packed_shot_attention,
}
# (forward atol, gradient tolerance relative to the gradient's scale)
TOLERANCE = {jnp.float32: (2e-6, 2e-5), jnp.bfloat16: (3e-2, 5e-2)}


def _batch(bounds_list, max_shot_frames=None):
  lays = [ShotLayout(b, PER_FRAME) for b in bounds_list]
  return layout.make_batch(lays, max_shots=5, max_shot_frames=max_shot_frames)


def _qkv(shots, dtype, heads=2, head_dim=16, seed=0):
  b, num_l = shots.shot_id_BxL.shape
  x = jax.random.normal(jax.random.key(seed), (4, b, num_l, heads, head_dim))
  return [t.astype(dtype) for t in x]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_matches_reference(case, impl, dtype):
  shots = _batch(LAYOUTS[case])
  q, k, v, do = _qkv(shots, dtype)
  f32 = lambda *xs: [x.astype(jnp.float32) for x in xs]

  def ref(q, k, v):
    return reference.sparse_shot_attention(*f32(q, k, v), shots)

  out, vjp = jax.vjp(lambda q, k, v: IMPLS[impl](q, k, v, shots), q, k, v)
  want, want_vjp = jax.vjp(ref, q, k, v)
  assert out.dtype == dtype
  fwd_tol, grad_tol = TOLERANCE[dtype]
  np.testing.assert_allclose(np.float32(out), want, rtol=0, atol=fwd_tol)
  for name, got, exp in zip("qkv", vjp(do), want_vjp(do.astype(jnp.float32)), strict=True):
    err = float(jnp.abs(got.astype(jnp.float32) - exp).max() / jnp.abs(exp).max())
    assert err < grad_tol, f"d{name}: relative error {err}"


def test_tpu_kernel_in_tpu_interpret_mode():
  # TPU-faithful interpret mode runs the Mosaic-style kernel as TPU would, at the block sizes
  # and head dim Mosaic accepts (128); 50-token frames put every cut inside a block.
  shots = layout.make_batch([ShotLayout((0, 2, 3, 6), 50), ShotLayout((0, 1, 6), 50)], max_shots=5)
  q, k, v, do = _qkv(shots, jnp.float32, heads=1, head_dim=128, seed=7)
  blocks = shot_kernel.BlockSizes(128, 128)
  attend = lambda q, k, v: shot_kernel.shot_attention(q, k, v, shots, blocks, False, "tpu")
  with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams()):
    out, vjp = jax.vjp(attend, q, k, v)
    grads = vjp(do)
  want, want_vjp = jax.vjp(lambda q, k, v: reference.sparse_shot_attention(q, k, v, shots), q, k, v)
  np.testing.assert_allclose(out, want, rtol=0, atol=2e-6)
  for got, exp in zip(grads, want_vjp(do), strict=True):
    np.testing.assert_allclose(got, exp, rtol=0, atol=2e-5 * float(jnp.abs(exp).max()))


@pytest.mark.parametrize("impl", ["kernel", "auto", "reference"])
def test_full_attention_implementations_agree(impl):
  q, k, v, do = _qkv(layout.dense_batch(2, 21), jnp.float32, seed=5)

  def run(impl):
    fn = lambda q, k, v: attention.self_attention(
      q, k, v, mode="full", shots=None, impl=impl, block_sizes=BLOCKS
    )
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(do)

  out, grads = run(impl)
  want = jax.nn.softmax(jnp.einsum("blhk,bmhk->bhlm", q, k) / 4.0, axis=-1)
  want = jnp.einsum("bhlm,bmhk->blhk", want, v)
  np.testing.assert_allclose(out, want, rtol=0, atol=2e-6)
  for got, exp in zip(grads, run("reference")[1], strict=True):
    np.testing.assert_allclose(got, exp, rtol=0, atol=1e-5 * float(jnp.abs(exp).max()))


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_new_cuts_do_not_recompile(backend):
  traces = []

  @jax.jit
  def loss_and_grads(q, k, v, shots):
    traces.append(1)
    attend = lambda q, k, v: shot_kernel.shot_attention(q, k, v, shots, BLOCKS, True, backend)
    loss = lambda q, k, v: jnp.sum(attend(q, k, v) ** 2)
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

  cuts = [[(0, 2, 3, 7)], [(0, 4, 5, 7)], [(0, 1, 7)], [(0, 7)]]
  batches = [_batch(c, max_shot_frames=7) for c in cuts]
  q, k, v, _ = _qkv(batches[0], jnp.float32, seed=3)
  results = [loss_and_grads(q, k, v, s)[0] for s in batches]
  assert len(traces) == 1
  assert len({float(r) for r in results}) == len(cuts)  # the cuts did change the result


def test_block_tables_skip_blocks():
  # 8 shots of 4 frames x 8 tokens, 32-token blocks: each q block visits its own token block and
  # the 2 tail blocks (8 summaries x 8 tokens); dense attention would visit all 8 token blocks.
  shots = layout.make_batch([ShotLayout(tuple(range(0, 33, 4)), 8)], max_shot_frames=4)
  visited, dense = shot_kernel.visited_blocks(shots, shot_kernel.BlockSizes(32, 32))
  assert dense == 8 * 8
  assert visited == 8 * (1 + 2)


def test_visited_blocks_count_the_blocks_that_run():
  # 8 shots of 64 tokens, 256-token blocks: 2 q blocks x (1 token + 1 tail block). A compiled GPU
  # kernel caps blocks at 128: 4 q blocks x (1 + 1) of a dense 4 x 4.
  shots = layout.make_batch([ShotLayout(tuple(range(0, 33, 4)), 16)], max_shot_frames=4)
  blocks = shot_kernel.BlockSizes(256, 256)
  assert shot_kernel.visited_blocks(shots, blocks, backend="tpu") == (4, 4)
  assert shot_kernel.visited_blocks(shots, blocks, interpret=True, backend="gpu") == (4, 4)
  assert shot_kernel.visited_blocks(shots, blocks, interpret=False, backend="gpu") == (8, 16)


@pytest.mark.parametrize("backend", [shot_kernel_tpu, shot_kernel_gpu])
def test_backends_provide_the_kernel_interface(backend):
  for method in ("forward", "dq", "dkv"):
    want = list(inspect.signature(getattr(shot_kernel.Backend, method)).parameters)[1:]
    assert list(inspect.signature(getattr(backend, method)).parameters) == want, method


def test_bad_inputs():
  with pytest.raises(ValueError, match="positive multiple of 8"):
    shot_kernel.BlockSizes(block_q=12)
  shots = _batch([(0, 6)])
  q, k, v, _ = _qkv(shots, jnp.float32)
  with pytest.raises(ValueError, match="must all be"):
    shot_kernel.shot_attention(q, k[:, :10], v, shots, BLOCKS, True)
  with pytest.raises(ValueError, match="shots describe"):
    shot_kernel.shot_attention(q[:, :25], k[:, :25], v[:, :25], shots, BLOCKS, True)
  with pytest.raises(ValueError, match="float32 or bfloat16"):
    shot_kernel.shot_attention(q.astype(jnp.float16), k, v, shots, BLOCKS, True)
  with pytest.raises(ValueError, match="multiples of 128"):
    shot_kernel.shot_attention(q, k, v, shots, BLOCKS, False, "tpu")
  with pytest.raises(ValueError, match="unknown kernel backend"):
    shot_kernel.shot_attention(q, k, v, shots, BLOCKS, True, "cuda")
  with pytest.raises(ValueError, match="unknown attention implementation"):
    attention.self_attention(q, k, v, mode="sparse", shots=shots, impl="flash")
  with pytest.raises(layout.LayoutError, match="max_shot_frames=4"):
    _batch([(0, 6)], max_shot_frames=4)


def test_kernel_under_shard_map_with_context_sharded_input():
  mesh = sharding.make_mesh(dict(data=2, fsdp=1, context=2, tensor=2))
  shots = _batch(LAYOUTS["batch_mixed"])
  q, k, v, _ = _qkv(shots, jnp.float32, heads=4)
  seq = NamedSharding(mesh, P("data", "context", "tensor", None))
  q, k, v = (jax.device_put(t, seq) for t in (q, k, v))
  fn = lambda q, k, v, s: attention.self_attention(
    q, k, v, mode="sparse", shots=s, impl="kernel", block_sizes=BLOCKS
  )
  with sharding.activate(mesh, sharding.DEFAULT_LOGICAL_RULES):
    out = jax.jit(fn)(q, k, v, shots)
  want = reference.sparse_shot_attention(q, k, v, shots)
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=0, atol=2e-6)


@pytest.mark.parametrize("impl", ["reference", "packed", "kernel"])  # packed: XLA chunked
def test_full_attention_never_sees_padding(impl):
  """Full attention over a clip padded to a longer bucket: the real tokens get the unpadded
  outputs and gradients (batch of two clips padded by different amounts), padding no gradient."""
  lays = [ShotLayout(b, PER_FRAME) for b in [(0, 2, 5), (0, 3)]]
  padded = layout.make_batch(lays, max_shots=2, num_frames=7)
  q, k, v, do = _qkv(padded, jnp.float32)
  attend = lambda shots: (
    lambda q, k, v: attention.self_attention(
      q, k, v, mode="full", shots=shots, impl=impl, block_sizes=BLOCKS, query_chunk=8
    )
  )
  out, vjp = jax.vjp(attend(padded), q, k, v)
  real = np.asarray(padded.shot_id_BxL) >= 0
  grads = vjp(jnp.where(real[..., None, None], do, 0))
  assert np.isfinite(np.asarray(out)).all()
  for row, lay in enumerate(lays):
    n = lay.num_tokens
    exact = [x[row : row + 1, :n] for x in (q, k, v)]
    want, want_vjp = jax.vjp(attend(None), *exact)
    np.testing.assert_allclose(out[row, :n], want[0], atol=2e-6)
    for got, exp in zip(grads, want_vjp(do[row : row + 1, :n]), strict=True):
      np.testing.assert_allclose(got[row, :n], exp[0], atol=2e-5)
      assert not np.asarray(got[row, n:]).any()


def test_chunked_attention_equals_reference_with_bias():
  q, k, v = jax.random.normal(jax.random.key(9), (3, 2, 37, 2, 8))
  bias = jnp.where(jax.random.bernoulli(jax.random.key(10), 0.3, (2, 37, 37)), -1e4, 0.0)
  want = reference.attention(q, k, v, bias_BxLxM=bias)
  for chunk in (8, 37, 64):  # padded last chunk, one exact chunk, one chunk larger than L
    got = chunked.chunked_attention(q, k, v, bias_BxLxM=bias, chunk=chunk)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", sorted(IMPLS) + ["reference"])
@pytest.mark.parametrize(
  ("bounds", "max_shots"),
  [((0, 2, 5), 5), ((0, 1, 2, 3, 4, 5), 5), ((0, 5), 1)],
  ids=["two_shots", "all_slots", "one_slot"],
)
def test_padding_tokens_are_invisible(impl, bounds, max_shots):
  """A clip padded to a longer bucket (layout.PAD_SHOT_ID tail) gives its real tokens the
  unpadded outputs and gradients, and the padding no gradient, also when every shot slot is used."""
  lay = ShotLayout(bounds, PER_FRAME)
  exact = layout.make_batch([lay], max_shots=max_shots)
  padded = layout.make_batch([lay], max_shots=max_shots, num_frames=bounds[-1] + 3)
  n = exact.shot_id_BxL.shape[1]
  q, k, v, do = _qkv(padded, jnp.float32)
  attend = IMPLS.get(impl, reference.sparse_shot_attention)
  out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, padded), q, k, v)
  want, want_vjp = jax.vjp(lambda q, k, v: attend(q, k, v, exact), q[:, :n], k[:, :n], v[:, :n])
  np.testing.assert_allclose(out[:, :n], want, atol=2e-6)
  assert np.isfinite(np.asarray(out)).all()
  for got, exp in zip(vjp(do.at[:, n:].set(0)), want_vjp(do[:, :n]), strict=True):
    np.testing.assert_allclose(got[:, :n], exp, atol=2e-5)
    assert not np.asarray(got[:, n:]).any()
