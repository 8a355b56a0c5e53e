"""HoloCine sparse shot attention vs dense attention as the number of shots grows.

For S = 1, 2, 4, 8, 16 shots of fixed length: tokens, dense and ideal sparse FLOPs, the kernel's
visited kv blocks vs dense blocks, and measured CPU time of the XLA packed path vs dense XLA
attention (jax.nn.dot_product_attention), forward and forward+backward, side by side.

  python benchmarks/shot_attention.py [--frames-per-shot 3] [--tokens-per-frame 64]

With --tpu, no timing: the kernel is compiled for one deviceless TPU chip at real size (95,160
tokens = 61 latent frames of 1560, 5 shots, max_shot_frames 13, bf16, head_dim 128), sparse and
full (one-shot layout), beside jax's splash attention for full attention, per block size:
compile seconds and per-chip bytes from memory_analysis, forward and forward+backward.

  JAX_PLATFORMS=cpu python benchmarks/shot_attention.py --tpu v5p:1x1x1 --heads 40 \
      --blocks 256 512 1024
"""

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import timing  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: E402
  splash_attention_kernel as splash,
)
from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: E402
  splash_attention_mask as splash_mask,
)
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from holocine_jax import layout, topology  # noqa: E402
from holocine_jax.attention import packed, shot_kernel  # noqa: E402


def best_time(fn, *args, repeats):
  """Best seconds of `fn(*args)` after one warm-up (compile) call."""
  run = lambda: jax.block_until_ready(fn(*args))
  run()
  return timing.best_of(run, repeats)


def flops(shots_list, heads, head_dim):
  """(dense, sparse) attention FLOPs: 2 matmuls x 2 flops per multiply-add."""
  dense = sparse = 0
  for lay in shots_list:
    g = lay.num_shots * lay.tokens_per_frame
    dense += 4 * heads * head_dim * lay.num_tokens**2
    sparse += (
      4
      * heads
      * head_dim
      * sum(n * (n + g) for n in (f * lay.tokens_per_frame for f in lay.latent_frames_per_shot()))
    )
  return dense, sparse


def row(num_shots, args):
  lay = layout.ShotLayout(
    tuple(range(0, args.frames_per_shot * num_shots + 1, args.frames_per_shot)),
    args.tokens_per_frame,
  )
  shots = layout.make_batch([lay], max_shot_frames=args.frames_per_shot)
  q, k, v = jax.random.normal(
    jax.random.key(0), (3, 1, lay.num_tokens, args.heads, args.head_dim), jnp.float32
  )
  dense_fn = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")
  sparse_fn = lambda q, k, v: packed.packed_shot_attention(q, k, v, shots)
  grad = lambda f: jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) ** 2), argnums=(0, 1, 2)))
  t = {
    "dense_fwd": best_time(jax.jit(dense_fn), q, k, v, repeats=args.repeats),
    "sparse_fwd": best_time(jax.jit(sparse_fn), q, k, v, repeats=args.repeats),
    "dense_bwd": best_time(grad(dense_fn), q, k, v, repeats=args.repeats),
    "sparse_bwd": best_time(grad(sparse_fn), q, k, v, repeats=args.repeats),
  }
  dense_flops, sparse_flops = flops([lay], args.heads, args.head_dim)
  blocks = shot_kernel.BlockSizes(args.block, args.block)
  visited, dense_blocks = shot_kernel.visited_blocks(shots, blocks)
  flop_ratio = dense_flops / sparse_flops
  fwd_ratio = t["dense_fwd"] / t["sparse_fwd"]
  bwd_ratio = t["dense_bwd"] / t["sparse_bwd"]
  print(
    f"| {num_shots:5} | {lay.num_tokens:6} | {dense_flops / 1e9:8.2f} | {sparse_flops / 1e9:8.2f} "
    f"| {flop_ratio:6.2f} | {visited:5}/{dense_blocks:<5} | {t['dense_fwd'] * 1e3:8.1f} "
    f"| {t['sparse_fwd'] * 1e3:8.1f} | {fwd_ratio:6.2f} | {t['dense_bwd'] * 1e3:8.1f} "
    f"| {t['sparse_bwd'] * 1e3:8.1f} | {bwd_ratio:6.2f} | {flop_ratio / max(fwd_ratio, 1e-9):8.2f} "
    f"| {flop_ratio / max(bwd_ratio, 1e-9):8.2f} |"
  )


def real_size_blocks(block: int):
  """Kernel kv blocks visited vs dense at 480x832 (1560 tokens per latent frame)."""
  print(
    f"\nKernel block visits at real size (1560 tokens/frame, 12 frames per shot, {block}-token "
    "blocks, incl. summary tail):"
  )
  print("| shots | tokens | visited / dense blocks | fraction |")
  print("|-------|--------|------------------------|----------|")
  for s in (1, 2, 5, 8, 13):
    lay = layout.ShotLayout(tuple(range(0, 12 * s + 1, 12)), 1560)
    shots = layout.make_batch([lay], max_shot_frames=12)
    visited, dense = shot_kernel.visited_blocks(shots, shot_kernel.BlockSizes(block, block))
    print(f"| {s:5} | {lay.num_tokens:6} | {visited:10} / {dense:<9} | {visited / dense:8.3f} |")


def splash_full(num_l: int, heads: int, block: int):
  """Full attention with jax's splash kernel: [B, L, H, K] in and out, padding as a segment."""
  lp = -(-num_l // block) * block
  sizes = dict.fromkeys(
    ("block_q", "block_kv", "block_kv_compute", "block_q_dkv", "block_kv_dkv"), block
  )
  sizes.update(block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  kernel = splash.make_splash_mha(
    splash_mask.MultiHeadMask([splash_mask.FullMask((lp, lp))] * heads),
    block_sizes=splash.BlockSizes(**sizes),
    head_shards=1,
    q_seq_shards=1,
  )
  segments = splash.SegmentIds(*[jnp.where(jnp.arange(lp) < num_l, 0, 1)] * 2)

  def attend(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK):
    def heads_major(x):
      return jnp.pad(x, ((0, 0), (0, lp - num_l), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    q_BxLxHxK = q_BxLxHxK * q_BxLxHxK.shape[-1] ** -0.5
    one = lambda q, k, v: kernel(q, k, v, segment_ids=segments)
    out = jax.vmap(one)(*(heads_major(x) for x in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)))
    return out.transpose(0, 2, 1, 3)[:, :num_l]

  return attend


def compile_row(name, attend, mesh, num_l, heads, visits):
  """Compile `attend` forward and forward+backward for the mesh's chip; print one table row."""
  x = jax.ShapeDtypeStruct((1, num_l, heads, 128), jnp.bfloat16, sharding=NamedSharding(mesh, P()))
  vjp = lambda q, k, v, do: jax.vjp(attend, q, k, v)[1](do)
  cells = []
  for fn, args in ((attend, (x,) * 3), (vjp, (x,) * 4)):
    start = time.perf_counter()
    with jax.set_mesh(mesh):
      memory = jax.jit(fn).lower(*args).compile().memory_analysis()
    gib = lambda n: n / 2**30
    cells.append(
      f"{time.perf_counter() - start:6.1f} | {gib(memory.temp_size_in_bytes):6.2f} "
      f"| {gib(memory.argument_size_in_bytes + memory.output_size_in_bytes):6.2f}"
    )
  print(f"| {name:20} | {visits:>15} | {cells[0]} | {cells[1]} |", flush=True)


def kernel_on(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, *, shots, block_sizes):
  return shot_kernel.shot_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, shots, block_sizes)


def tpu_compile_table(args):
  """Kernel (sparse, full) and splash (full) compiled for one TPU chip at real size."""
  mesh = jax.sharding.Mesh(np.array(topology.devices(args.tpu)[:1]), ("x",))
  lay = layout.ShotLayout((0, 12, 24, 36, 48, 61), 1560)
  sparse = layout.make_batch([lay], max_shot_frames=13)
  dense = layout.dense_batch(1, lay.num_tokens)
  print(
    f"jax {jax.__version__}, compiled for {args.tpu} ({mesh.devices.flat[0].device_kind}): "
    f"L={lay.num_tokens}, shots {lay.latent_frames_per_shot()} latent frames, max_shot_frames "
    f"13, B=1, H={args.heads}, K=128, bf16. Seconds, GiB per chip (temp; args + outputs)."
  )
  header = ("path (block)", "kv blocks (dns)", "fwd s", "temp", "in+out", "f+b s", "temp", "in+out")
  widths = (20, 15, 6, 6, 6, 6, 6, 6)
  print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
  print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
  for block in args.blocks:
    sizes = shot_kernel.BlockSizes(block, block)
    for mode, shots in (("sparse", sparse), ("full", dense)):
      visited, total = shot_kernel.visited_blocks(shots, sizes)
      attend = functools.partial(kernel_on, shots=shots, block_sizes=sizes)
      compile_row(
        f"kernel {mode} ({block})", attend, mesh, lay.num_tokens, args.heads, f"{visited}/{total}"
      )
    lp_blocks = -(-lay.num_tokens // block)
    compile_row(
      f"splash full ({block})",
      splash_full(lay.num_tokens, args.heads, block),
      mesh,
      lay.num_tokens,
      args.heads,
      f"{lp_blocks**2}/{lp_blocks**2}",
    )


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--frames-per-shot", type=int, default=3)
  parser.add_argument("--tokens-per-frame", type=int, default=64)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--block", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
  parser.add_argument("--tpu", help="compile for one chip of this deviceless TPU topology")
  parser.add_argument("--blocks", type=int, nargs="+", default=[512])
  args = parser.parse_args()
  if args.tpu:
    tpu_compile_table(args)
    return
  print(
    f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cpus; shot = "
    f"{args.frames_per_shot} frames x {args.tokens_per_frame} tokens, H={args.heads}, "
    f"K={args.head_dim}, fp32, best of {args.repeats}; times in ms"
  )
  print(
    "| shots | tokens | dense GF | sparse GF | FLOP x | kernel blocks | dense fwd | packed fwd "
    "| fwd x  | dense f+b | packed f+b | f+b x  | FLOPx/fwdx | FLOPx/f+bx |"
  )
  print(
    "|-------|--------|----------|-----------|--------|---------------|-----------|------------"
    "|--------|-----------|------------|--------|------------|------------|"
  )
  for s in args.shots:
    row(s, args)
  real_size_blocks(512)


if __name__ == "__main__":
  main()
