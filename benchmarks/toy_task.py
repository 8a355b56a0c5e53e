"""Toy task: transition control (SCA) and per-shot adherence against training steps, with and
without window cross-attention (step 0: a random init), on CPU.

  python benchmarks/toy_task.py [--steps 0,300,1000] [--count 16] [--root /tmp/toy_task]

Per variant, one run of `python -m holocine_jax.train` on configs/tiny.py's synthetic data to the
largest step (checkpoints at the others; the learning-rate schedule is that run's); then, per
step, `holocine_jax.sample` of the same `--count` toy scenes (evaluation/toy.py: held-out draws
of the synthetic generator, 17 frames, 2-3 shots, requested cuts) from that checkpoint and
`holocine_jax.evaluate` with the toy scorer (`toy.measure`): SCA from the toy scorer's own cuts
and from TransNet V2's (which misses about half the cuts of ground-truth toy videos), per-shot
adherence and its parts. The variant without window cross-attention trains and samples with
`window=false`. Rerunning reuses finished workdirs and videos. 16 scenes to 5000 steps: ~25 min
on 2 CPU cores.
"""

import argparse
import functools
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402

from holocine_jax import train  # noqa: E402
from holocine_jax.evaluation import toy  # noqa: E402

VARIANTS = {"window": "configs/tiny.py", "no window": "configs/tiny.py:window=false"}
COLUMNS = (
  "toy/sca",
  "sca",
  "toy/adherence",
  "toy/colour",
  "toy/shape",
  "toy/motion",
  "toy/background",
)


def train_variant(config: str, workdir: str, steps: list[int]) -> None:
  """Trains `config` to max(steps) in `workdir`, keeping a checkpoint at every step of `steps`."""
  every = functools.reduce(math.gcd, steps)
  overrides = dict(
    num_steps=max(steps),
    checkpoint_every=every,
    keep_checkpoints=max(steps) // every + 1,
    log_every=every,
    progress_bar=False,
  )
  argv = ["--config", config, "--workdir", workdir]
  for key, value in overrides.items():
    argv += ["--set", f"train.{key}={value}"]
  if train.main(argv):
    raise RuntimeError(f"training {workdir} stopped early")


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument(
    "--steps", default="0,100,300,1000,3000,5000", help="training steps (0: init)"
  )
  parser.add_argument("--count", type=int, default=16, help="toy scenes per measurement")
  parser.add_argument("--root", default="/tmp/toy_task", help="workdirs and videos")
  args = parser.parse_args()
  steps = sorted(int(s) for s in args.steps.split(","))
  trained = [s for s in steps if s > 0]
  rows = []
  for variant, config in VARIANTS.items():
    workdir = os.path.join(args.root, variant.replace(" ", "_"))
    if trained:
      train_variant(config, workdir, trained)
    for step in steps:
      out = os.path.join(workdir, "samples", str(step))
      mean = toy.measure(
        out, config, workdir if step else None, step=step or None, count=args.count
      )
      rows.append((variant, step, mean))
  print(
    f"\njax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cpus; configs/tiny.py "
    f"synthetic data, {args.count} toy scenes (17 frames, 2-3 shots); step 0 = random init"
  )
  print(
    "| variant | steps | SCA (toy cuts) | SCA (TransNet) | adherence | colour | shape | motion "
    "| background | TransNet missed / extra |"
  )
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  for variant, step, mean in rows:
    values = " | ".join(f"{mean.get(k, math.nan):.3f}" for k in COLUMNS)
    print(f"| {variant} | {step} | {values} | {mean['total_missed']} / {mean['total_extra']} |")


if __name__ == "__main__":
  main()
