"""HoloCine's recipe at toy size: pre-train, then fine-tune for multi-shot scenes.

  python benchmarks/finetune_recipe.py [--base_steps 600] [--steps 200] [--count 32]

A base is trained on single-shot toy scenes (configs/tiny.py's synthetic data with
data.max_shots=1) with full self-attention and no window cross-attention, as Wan2.2 is trained
on single clips. It is then fine-tuned on multi-shot toy scenes (up to 3 shots) with window
cross-attention and sparse inter-shot self-attention through `train.init_from`, (a) fully and
(b) with LoRA rank 4 on a frozen base, against (c) the same multi-shot model trained from a
random init for the same steps. Every run trains with `python -m holocine_jax.train` on 17-frame
clips (the toy scenes' length) with tiny's schedule and learning rate, and is scored by
`toy.measure` (sampling `--count` held-out toy scenes of 2-3 shots, the toy scorer's cuts and
adherence, TransNet V2's cuts). The base is scored as trained (full attention, no window).
Rerunning reuses finished workdirs and videos.
"""

import argparse
import dataclasses
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402

from holocine_jax import train  # noqa: E402
from holocine_jax.evaluation import toy  # noqa: E402

BASE = "configs/tiny.py:window=false"  # full self-attention, full cross-attention
MULTI_SHOT = "configs/tiny.py:attention=sparse"  # window cross-attention is tiny's default
# every run: the toy scenes' 17-frame clips only (one shape bucket: one compile per run)
COMMON_SETS = ("data.frame_choices=(17,)",)
COLUMNS = ("toy/sca", "toy/adherence", "toy/colour", "toy/shape", "toy/motion", "sca")


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  config: str  # samples with this config (a LoRA workdir samples as base + merged adapters)
  sets: tuple[str, ...]  # --set overrides; "{base}" is the base workdir
  fine_tune: bool  # trains the fine-tuning steps (else the base steps)
  lora: int = 0  # trains LoRA adapters of this rank on the frozen base

  @property
  def train_config(self) -> str:
    return f"{self.config},lora={self.lora}" if self.lora else self.config


def variants(lora_rank: int = 4) -> list[Variant]:
  init = ("train.init_from={base}",)
  return [
    Variant("base (single shot)", BASE, ("data.max_shots=1",), False),
    Variant("scratch", MULTI_SHOT, (), True),
    Variant("full fine-tune", MULTI_SHOT, init, True),
    Variant(f"LoRA rank {lora_rank}", MULTI_SHOT, init, True, lora_rank),
  ]


def train_run(config: str, workdir: str, sets: list[str]) -> float:
  """Trains `config` in `workdir` with `--set` overrides; the seconds it took (recorded: a
  finished workdir is not trained again)."""
  done = os.path.join(workdir, "done")
  if os.path.exists(done):
    with open(done) as f:
      return float(f.read())
  argv = ["--config", config, "--workdir", workdir]
  start = time.perf_counter()
  if train.main(argv + [a for s in sets for a in ("--set", s)]):
    raise RuntimeError(f"training {workdir} stopped early")
  seconds = time.perf_counter() - start
  with open(done, "w") as f:
    f.write(f"{seconds:.1f}\n")
  return seconds


def run(
  root: str,
  *,
  base_steps: int,
  steps: int,
  count: int,
  lora_rank: int = 4,
  measured: tuple[str, ...] | None = None,
) -> list[dict]:
  """Trains the base and every fine-tuning variant under `root` and scores those named in
  `measured` (None: all) on `count` toy scenes: one row each with variant, steps, train seconds
  and toy.measure's means."""
  base = os.path.join(root, "base")
  rows = []
  for v in variants(lora_rank):
    workdir = base if not v.fine_tune else os.path.join(root, v.name.replace(" ", "_"))
    n = steps if v.fine_tune else base_steps
    sets = [s.format(base=base) for s in v.sets + COMMON_SETS]
    sets += [f"train.num_steps={n}", f"train.checkpoint_every={n}", "train.progress_bar=false"]
    seconds = train_run(v.train_config, workdir, sets)
    if measured is None or v.name in measured:
      mean = toy.measure(os.path.join(workdir, "videos"), v.config, workdir, count=count)
      rows.append(dict(variant=v.name, steps=n, seconds=seconds, **mean))
  return rows


def table(rows: list[dict]) -> str:
  head = "| variant | steps | SCA (toy cuts) | adherence | colour | shape | motion | SCA (TransNet)"
  lines = [head + " | train wall |", "| --- " + "| ---: " * 8 + "|"]
  for r in rows:
    values = " | ".join(f"{r.get(k, math.nan):.3f}" for k in COLUMNS)
    lines.append(f"| {r['variant']} | {r['steps']} | {values} | {r['seconds']:.0f} s |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--base_steps", type=int, default=600, help="single-shot pre-training")
  parser.add_argument("--steps", type=int, default=200, help="multi-shot steps per variant")
  parser.add_argument("--count", type=int, default=32, help="toy scenes per measurement")
  parser.add_argument("--lora_rank", type=int, default=4)
  parser.add_argument("--root", default="/tmp/finetune_recipe", help="workdirs and videos")
  args = parser.parse_args()
  rows = run(
    args.root,
    base_steps=args.base_steps,
    steps=args.steps,
    count=args.count,
    lora_rank=args.lora_rank,
  )
  print(
    f"\njax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cpus; configs/tiny.py, "
    f"{args.count} held-out toy scenes (17 frames, 2-3 shots)"
  )
  print(table(rows))


if __name__ == "__main__":
  main()
