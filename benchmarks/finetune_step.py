"""Fine-tune step cost on one CPU device: full fine-tune vs LoRA on a bf16 / int8 / nf4 base.

  python benchmarks/finetune_step.py                 # tiny config, rank 4
  python benchmarks/finetune_step.py --size mid --rank 16

Per mode: trainable params, optimizer-state bytes, checkpoint bytes on disk (orbax, the train
state after the timed steps, as the loop saves it: a LoRA run's adapters only), the frozen
base's bytes, median step ms after a warmup step, and the compiled step's peak (arguments +
outputs + temporaries - donated aliases, XLA's memory_analysis; for LoRA the frozen base is an
argument). Same data, seed and lr for all.
Step times on a shared CPU are noisy: compare the bytes columns first.
"""

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from benchmarks import train_step  # noqa: E402
from configs import tiny  # noqa: E402
from holocine_jax import sharding  # noqa: E402
from holocine_jax.model import dit, lora  # noqa: E402
from holocine_jax.model.config import DiTConfig  # noqa: E402
from holocine_jax.model.dit import WanDiT  # noqa: E402
from holocine_jax.training import loss as loss_lib  # noqa: E402
from holocine_jax.training import state  # noqa: E402
from holocine_jax.training import step as step_lib  # noqa: E402

MID = dict(dim=256, num_layers=4, num_heads=4, ffn_dim=1024)
MODES = (("full", 0, "bf16"), ("lora bf16", 1, "bf16"), ("lora int8", 1, "int8"),
         ("lora nf4", 1, "nf4"))  # fmt: skip


def _config(size, rank, base):
  config = tiny.get_config(f"lora={rank},lora_base={base}" if rank else "")
  config.data.frame_choices = (17,)
  if size == "mid":
    config.model.update(MID)
  return config


def _base(model, mesh, rules):
  """A random frozen base in `model`'s declared layout ({} for a full fine-tune)."""
  _, shardings = state.base_abstract(model, mesh, rules)
  if not model.config.lora_rank:
    return {}, {}
  plain = dataclasses.replace(lora.plain_config(model.config), param_dtype="bfloat16")
  params, _ = sharding.init_sharded(dit.init_fn(plain), mesh, rules, jax.random.key(1))
  quantize = jax.jit(lambda p: {"params": lora.quantize_base(p, model.config)},
                     out_shardings=shardings)  # fmt: skip
  return quantize(params), shardings


def _nbytes(tree):
  """Bytes of the arrays' elements (4-bit codes count half a byte)."""
  return sum(x.size * jax.dtypes.itemsize_bits(x.dtype) // 8 for x in jax.tree.leaves(tree))


def _disk_bytes(train_state) -> int:
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "state")
    with ocp.StandardCheckpointer() as ckpt:
      ckpt.save(path, train_state)
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def row(size, name, rank, base, repeats):
  config = _config(size, rank, base)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, context=1, tensor=1), jax.devices()[:1])
  rules = config.logical_rules
  model = WanDiT(DiTConfig.from_config(config.model))
  tx, schedule = state.optimizer(config.train)
  train_state, shardings = state.create(model, tx, mesh, rules, jax.random.key(0))
  frozen, base_shardings = _base(model, mesh, rules)
  batch, batch_shardings = train_step.synthetic_batch(config, mesh)
  step = step_lib.make_train_step(
    model, tx, schedule, loss_lib.FlowMatching(), seed=0, mesh=mesh, rules=rules,
    state_shardings=shardings, batch_shardings=batch_shardings, base_shardings=base_shardings,
  )  # fmt: skip
  trainable = sum(x.size for x in jax.tree.leaves(train_state.params))
  opt_bytes = _nbytes(train_state.opt_state)
  with sharding.activate(mesh, rules):
    mem = step.jitted.lower(train_state, frozen, batch).compile().memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes)  # fmt: skip
  train_state, metrics = step(train_state, frozen, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    train_state, metrics = step(train_state, frozen, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  disk = _disk_bytes(train_state)  # after steps: zero moments / adapters compress on disk
  return name, trainable, opt_bytes, disk, _nbytes(frozen), 1e3 * np.median(times), peak


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--size", choices=["tiny", "mid"], default="tiny")
  p.add_argument("--rank", type=int, default=4)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  print(f"\n## Fine-tune step on one CPU device ({args.size}, LoRA rank {args.rank}, batch 8)\n")
  print("| mode | trainable params | optimizer state KB | checkpoint KB on disk | frozen base KB "
        "| step ms (median) | compiled peak KB |")  # fmt: skip
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
  for name, lora_on, base in MODES:
    mode, trainable, opt, disk, frozen, ms, peak = row(
      args.size, name, args.rank * lora_on, base, args.repeats
    )
    print(f"| {mode} | {trainable:,} | {opt / 1e3:.0f} | {disk / 1e3:.0f} | {frozen / 1e3:.0f} "
          f"| {ms:.1f} | {peak / 1e3:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
  main()
