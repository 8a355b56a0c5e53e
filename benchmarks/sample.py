"""Sampling speed on CPU, tiny config: seconds per denoising step and per scene, full vs sparse
self-attention at 1, 4 and 8 shots, side by side in one run (compile excluded, reported apart).

  python benchmarks/sample.py [--steps 4] [--frames-per-shot 2] [--latent 16]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import timing  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from configs import tiny  # noqa: E402
from holocine_jax import layout, scene  # noqa: E402
from holocine_jax.model import dit  # noqa: E402
from holocine_jax.model.config import DiTConfig  # noqa: E402
from holocine_jax.sampling.pipeline import Sampler, SamplerConfig  # noqa: E402
from holocine_jax.sampling.text_backends import ToyText  # noqa: E402


def run(attention: str, num_shots: int, args) -> tuple[float, float, int]:
  """(compile s, seconds per scene, tokens) for one scene of `num_shots` shots."""
  config = DiTConfig.from_config(tiny.get_config(f"attention={attention}").model)
  model = dit.WanDiT(config)
  frames = num_shots * args.frames_per_shot
  num_frames = 4 * (frames - 1) + 1
  cuts = [4 * (i * args.frames_per_shot - 1) + 1 for i in range(1, num_shots)]
  s = scene.Scene.create(
    "Shapes.", [f"a red disc moving left {i}" for i in range(num_shots)], num_frames, cuts
  )
  grid = layout.LatentGrid(frames, args.latent, args.latent, config.patch_size)
  text = ToyText(config.text_dim, 128)
  pos, neg = text.encode_for_cfg([s], "blurry")
  lay = layout.ShotLayout.from_scene(s, grid)
  shots = layout.make_batch(
    [lay, lay],
    [pos.windows[0], None],
    max_shots=num_shots,
    max_shot_frames=args.frames_per_shot,
    text_len=128,
  )
  context = np.concatenate([pos.context_BxTxD, neg.context_BxTxD])
  params = {"params": dit.init_fn(config)(jax.random.key(0))}
  noise = (
    np.random.RandomState(0)
    .randn(1, frames, args.latent, args.latent, config.in_channels)
    .astype(np.float32)
  )
  sampler = Sampler(model, SamplerConfig(num_steps=args.steps))
  start = time.perf_counter()
  jax.block_until_ready(sampler(params, None, noise, context, shots))
  first = time.perf_counter() - start
  best = timing.best_of(
    lambda: jax.block_until_ready(sampler(params, None, noise, context, shots)), args.repeats
  )
  return first - best, best, grid.num_tokens


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--frames-per-shot", type=int, default=2)
  parser.add_argument("--latent", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  print(
    f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cpus; tiny DiT, "
    f"{args.frames_per_shot} latent frames x {args.latent}x{args.latent} per shot, CFG "
    f"(batch 2), {args.steps} steps, best of {args.repeats}"
  )
  print(
    "| shots | tokens | full s/step | sparse s/step | full s/scene | sparse s/scene "
    "| full/sparse | compile full s | compile sparse s |"
  )
  print(
    "|-------|--------|-------------|---------------|--------------|----------------"
    "|-------------|----------------|------------------|"
  )
  for n in (1, 4, 8):
    cf, full, tokens = run("full", n, args)
    cs, sparse, _ = run("sparse", n, args)
    print(
      f"| {n:5} | {tokens:6} | {full / args.steps:11.3f} | {sparse / args.steps:13.3f} "
      f"| {full:12.2f} | {sparse:14.2f} | {full / sparse:11.2f} | {cf:14.1f} | {cs:16.1f} |"
    )


if __name__ == "__main__":
  main()
