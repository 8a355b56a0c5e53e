"""VAE decode: time and compiled memory vs clip length, and ours vs diffusers (torch) on CPU.

Run: /work/venv/bin/python benchmarks/vae.py [--size 64] [--base-dim 32] [--frames 4,8,16,32]
A reduced Wan2.1 VAE (same structure, fewer channels) decodes [1, T', S/8, S/8, 16] latents.
Memory comes from the compiled executable's memory_analysis(): 'temp' is XLA's scratch
buffers (what the chunked scan keeps flat), 'out' the decoded video itself (grows with T by
definition), 'peak' = temp + args + out, an upper bound on what the executable holds (XLA CPU's
own peak_memory_in_bytes leaves out the buffers inside the scan body, so it is not used).
The torch ratio row interleaves ours and torch runs and keeps the best of each (the CPU may be
shared).
'temp whole' compiles the same decode with all latent frames after the first in one chunk
(no scan) to show what chunking saves. The torch column times diffusers' AutoencoderKLWan.decode
with the same weights in the same process. A second table compiles (does not run) the full
Wan2.1 VAE at 480x832 and reports the same memory numbers for decode and encode.
"""

import argparse
import dataclasses
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers import AutoencoderKLWan
from flax.core import meta

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout

import timing  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from holocine_jax.model import vae  # noqa: E402
from holocine_jax.weights import diffusers_vae, keymap  # noqa: E402

MIB = 2**20


def _peak(mem) -> int:
  return mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", type=int, default=64, help="pixel height = width")
  ap.add_argument("--base-dim", type=int, default=16)
  ap.add_argument("--frames", default="4,8,16,32", help="latent frame counts")
  ap.add_argument("--torch-frames", type=int, default=8, help="latent frames for the torch ratio")
  ap.add_argument("--repeats", type=int, default=1)
  ap.add_argument("--full-latent-frames", default="3,16,61", help="'' to skip the 480x832 table")
  args = ap.parse_args()

  torch.manual_seed(0)
  ref = AutoencoderKLWan(base_dim=args.base_dim).eval()
  cfg = vae.VAEConfig(base_dim=args.base_dim)
  abstract = meta.unbox(jax.eval_shape(vae.init_fn(cfg), jax.random.key(0)))
  state = {k: v.numpy() for k, v in ref.state_dict().items()}
  params = jax.tree.map(jnp.asarray, keymap.convert(state, diffusers_vae.RULES, abstract))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  h = args.size // 8
  print(
    f"Wan2.1 VAE decode, base_dim {args.base_dim} ({n_params / 1e6:.1f}M params), "
    f"{args.size}x{args.size} px, batch 1, fp32, {jax.devices()[0].platform} "
    f"({jax.device_count()} device), torch threads {torch.get_num_threads()}"
  )
  header = (
    f"{'latent T':>8} {'frames':>6} {'compile s':>9} {'decode s':>8} {'ms/frame':>8} "
    f"{'peak MiB':>8} {'temp MiB':>8} {'out MiB':>7} {'args MiB':>8} {'temp whole MiB':>14} "
    f"{'torch s':>7} "
    f"{'torch/ours':>10}"
  )
  print(header)
  print("-" * len(header))
  decode = jax.jit(vae.decode, static_argnums=2)
  for t in [int(v) for v in args.frames.split(",")]:
    lat = jnp.asarray(np.random.RandomState(t).randn(1, t, h, h, 16).astype(np.float32))
    t0 = time.perf_counter()
    compiled = decode.lower(params, lat, cfg).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    whole_cfg = dataclasses.replace(cfg, decode_chunk=max(t - 1, 1))
    whole = decode.lower(params, lat, whole_cfg).compile().memory_analysis()
    ours = timing.best_of(
      lambda c=compiled, z=lat: jax.block_until_ready(c(params, z)), args.repeats
    )
    torch_cell, ratio_cell = "", ""
    if t == args.torch_frames:
      mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
      std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
      raw = torch.from_numpy(np.asarray(lat).transpose(0, 4, 1, 2, 3).copy()) * std + mean
      run_ours = lambda c=compiled, z=lat: jax.block_until_ready(c(params, z))
      with torch.no_grad():
        run_torch = lambda r=raw: ref.decode(r)
        theirs = float("inf")
        for _ in range(2):  # interleaved, best of each
          ours = min(ours, timing.best_of(run_ours, 1))
          theirs = min(theirs, timing.best_of(run_torch, 1))
        out_t = ref.decode(raw).sample.numpy().transpose(0, 2, 3, 4, 1)
      err = np.abs(np.asarray(compiled(params, lat)) - out_t).max()
      torch_cell, ratio_cell = f"{theirs:7.2f}", f"{theirs / ours:10.2f}"
      print(f"# max |ours - diffusers| at T'={t}: {err:.2e}")
    frames = 4 * (t - 1) + 1
    print(
      f"{t:8d} {frames:6d} {compile_s:9.1f} {ours:8.2f} {1e3 * ours / frames:8.1f} "
      f"{_peak(mem) / MIB:8.1f} {mem.temp_size_in_bytes / MIB:8.1f} "
      f"{mem.output_size_in_bytes / MIB:7.1f} "
      f"{mem.argument_size_in_bytes / MIB:8.1f} {whole.temp_size_in_bytes / MIB:14.1f} "
      f"{torch_cell:>7} {ratio_cell:>10}"
    )

  if args.full_latent_frames:
    full_memory([int(v) for v in args.full_latent_frames.split(",")])


def full_memory(latent_frames):
  """Compiled (not run) memory of the full Wan2.1 VAE at 480x832, fp32 and bf16."""
  print("\nFull Wan2.1 VAE (base_dim 96), 480x832, batch 1: compiled memory_analysis, not run")
  header = (
    f"{'dtype':>8} {'op':>6} {'frames':>6} {'latent T':>8} {'peak GiB':>8} {'temp GiB':>8} "
    f"{'out GiB':>7}"
  )
  print(header)
  print("-" * len(header))
  for dtype in ("float32", "bfloat16"):
    cfg = vae.VAEConfig(dtype=dtype, param_dtype=dtype)
    params = meta.unbox(jax.eval_shape(vae.init_fn(cfg), jax.random.key(0)))
    for op, fn in (("decode", vae.decode), ("encode", vae.encode)):
      for t in latent_frames:
        frames = 4 * (t - 1) + 1
        shape = (1, t, 60, 104, 16) if op == "decode" else (1, frames, 480, 832, 3)
        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        mem = jax.jit(fn, static_argnums=2).lower(params, x, cfg).compile().memory_analysis()
        print(
          f"{dtype:>8} {op:>6} {frames:6d} {t:8d} {_peak(mem) / 2**30:8.2f} "
          f"{mem.temp_size_in_bytes / 2**30:8.2f} "
          f"{mem.output_size_in_bytes / 2**30:7.2f}"
        )


if __name__ == "__main__":
  main()
