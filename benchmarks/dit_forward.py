"""DiT forward on CPU: our jitted JAX forward vs the diffusers torch forward, fp32, same
weights and inputs, side by side per shape. Compile time is reported separately.

  python benchmarks/dit_forward.py [--repeats 5]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import timing  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
import torch  # noqa: E402
from flax.core import meta  # noqa: E402

from holocine_jax.model.config import DiTConfig  # noqa: E402
from holocine_jax.model.dit import WanDiT  # noqa: E402
from holocine_jax.weights import diffusers_dit, keymap  # noqa: E402
from tests import wan_reference  # noqa: E402

# (name, heads, head_dim, layers, ffn, latent F, H, W): tiny to small.
SHAPES = [
  ("tiny", 2, 16, 2, 64, 3, 8, 8),
  ("small", 4, 32, 4, 512, 5, 16, 16),
  ("medium", 8, 32, 4, 1024, 9, 16, 32),
]
TEXT_LEN, TEXT_DIM, CHANNELS = 64, 64, 16


def bench(name, heads, head_dim, layers, ffn, f, h, w, repeats):
  torch_model = wan_reference.tiny_wan(
    num_attention_heads=heads,
    attention_head_dim=head_dim,
    num_layers=layers,
    ffn_dim=ffn,
    text_dim=TEXT_DIM,
    in_channels=CHANNELS,
    out_channels=CHANNELS,
    freq_dim=256,
  )
  config = DiTConfig(
    dim=heads * head_dim,
    num_layers=layers,
    num_heads=heads,
    ffn_dim=ffn,
    freq_dim=256,
    text_dim=TEXT_DIM,
    in_channels=CHANNELS,
    out_channels=CHANNELS,
    dtype="float32",
  )
  rng = np.random.RandomState(0)
  x = rng.randn(1, f, h, w, CHANNELS).astype(np.float32)
  t = np.array([500.0], np.float32)
  ctx = rng.randn(1, TEXT_LEN, TEXT_DIM).astype(np.float32)
  model = WanDiT(config)
  abstract = meta.unbox(jax.eval_shape(model.init, jax.random.key(0), x, t, ctx))["params"]
  params = {
    "params": keymap.convert(wan_reference.state_dict(torch_model), diffusers_dit.RULES, abstract)
  }
  fwd = jax.jit(model.apply)
  start = time.perf_counter()
  compiled = fwd.lower(params, x, t, ctx).compile()
  compile_s = time.perf_counter() - start
  ours = timing.best_of(lambda: compiled(params, x, t, ctx).block_until_ready(), repeats)
  theirs = timing.best_of(lambda: wan_reference.run(torch_model, x, t, ctx), repeats)
  want = wan_reference.run(torch_model, x, t, ctx)
  err = np.abs(np.asarray(compiled(params, x, t, ctx)) - want).max() / np.abs(want).max()
  tokens = f * (h // 2) * (w // 2)
  print(
    f"| {name:6} | {heads * head_dim:5} | {layers:6} | {tokens:6} | {compile_s:9.2f} | "
    f"{ours * 1e3:9.1f} | {theirs * 1e3:10.1f} | {theirs / ours:11.2f} | {err:8.1e} |"
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  print(
    f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}, "
    f"{os.cpu_count()} cpus; best of {args.repeats}"
  )
  print(
    "| shape  |   dim | layers | tokens | compile s | ours ms   | torch ms   | torch/ours  "
    "| rel err  |"
  )
  print(
    "|--------|-------|--------|--------|-----------|-----------|------------|-------------"
    "|----------|"
  )
  for shape in SHAPES:
    bench(*shape, args.repeats)


if __name__ == "__main__":
  main()
