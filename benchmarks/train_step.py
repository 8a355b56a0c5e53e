"""Train-step cost on CPU and the per-device memory plan of the A14B expert.

  python benchmarks/train_step.py            # both parts, a few minutes on 2 CPU cores
  python benchmarks/train_step.py --part steps|plan

Part 1: jitted train step (loss + grads + AdamW) on one CPU device: median step time and compiled
peak memory (arguments + outputs + temporaries - donated aliases) for the tiny and a mid config,
full vs sparse self-attention, remat off vs full.

Part 2: the A14B expert at 95,160 tokens (61 latent frames x 60 x 104) per sample, one sample per
data-parallel group, on 64 chips (fsdp 64) and 256 chips (fsdp 64 x context 4). Params, grads
and Adam state come exactly from eval_shape + the logical sharding rules. Activations are an
estimate for full remat with a flash-style attention kernel (O(L) memory): the scan saves one
bf16 residual [L, D] per layer, and the backward of one layer holds about
  ws = 2 * (6 D * 4 + 8 D * 2 + F * (2 + 4)) bytes per token   (fp32 norms/modulation/residual
  adds, bf16 q/k/v/o/cross-attn tensors, the FFN hidden in bf16 plus its fp32 GELU input; x2 for
  recomputed forward + gradients). The layer-count slope of that model (saved residual + the
  layer's bf16 weight copies) is checked against XLA's compiled memory analysis on CPU at 1 and 2
  layers (dense CPU attention makes the token-dependent part differ on CPU, so only the slope is
  compared).
"""

import argparse
import functools
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax.core import meta  # noqa: E402

from configs import tiny, wan22_t2v_a14b  # noqa: E402
from holocine_jax import layout, sharding  # noqa: E402
from holocine_jax.model import dit  # noqa: E402
from holocine_jax.model.config import DiTConfig  # noqa: E402
from holocine_jax.model.dit import WanDiT  # noqa: E402
from holocine_jax.training import global_batch, records, state, synthetic  # noqa: E402
from holocine_jax.training import loss as loss_lib  # noqa: E402
from holocine_jax.training import step as step_lib  # noqa: E402

GB = 1e9
MID = dict(dim=256, num_layers=4, num_heads=4, ffn_dim=1024, text_dim=64, in_channels=16,
           out_channels=16)  # fmt: skip
MID_DATA = dict(frame_choices=(33,), latent_height=16, latent_width=16, max_shots=3,
                max_shot_frames=9, text_len=32)  # fmt: skip


def _config(name, attention, remat):
  config = tiny.get_config(
    f"attention={attention},remat={remat},batch={8 if name == 'tiny' else 2}"
  )
  config.data.frame_choices = (17,)
  if name == "mid":
    config.model.update(MID)
    config.data.update(MID_DATA)
  return config


def synthetic_batch(config, mesh):
  """(global batch of the first samples of the synthetic data, its shardings) on `mesh`."""
  source = synthetic.SyntheticSource.from_config(config.data, config.model)
  b = config.train.global_batch
  host = records.collate(
    [source[i] for i in range(b)],
    patch=config.model.patch_size,
    max_shots=config.data.max_shots,
    max_shot_frames=config.data.max_shot_frames,
    text_len=config.data.text_len,
  )
  shardings = global_batch.shardings(host, mesh, config.logical_rules)
  return global_batch.to_global(host, shardings, b, (0, b)), shardings


@functools.lru_cache
def _initial_state(name, mesh):
  config = _config(name, "full", "none")
  model = WanDiT(DiTConfig.from_config(config.model))
  tx, _ = state.optimizer(config.train)
  train_state, shardings = state.create(model, tx, mesh, config.logical_rules, jax.random.key(0))
  return jax.device_get(train_state), shardings


def step_row(name, attention, remat, repeats=3):
  config = _config(name, attention, remat)
  mesh = sharding.make_mesh(dict(data=1, fsdp=1, context=1, tensor=1), jax.devices()[:1])
  model = WanDiT(DiTConfig.from_config(config.model))
  tx, schedule = state.optimizer(config.train)
  host_state, shardings = _initial_state(name, mesh)  # the same for every attention and remat
  train_state = jax.device_put(host_state, shardings)
  batch, batch_shardings = synthetic_batch(config, mesh)
  step = step_lib.make_train_step(
    model, tx, schedule, loss_lib.FlowMatching(), seed=0, mesh=mesh, rules=config.logical_rules,
    state_shardings=shardings, batch_shardings=batch_shardings,
  )  # fmt: skip
  with sharding.activate(mesh, config.logical_rules):
    t0 = time.perf_counter()
    compiled = step.jitted.lower(train_state, {}, batch).compile()
    compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  peak = (
    mem.argument_size_in_bytes
    + mem.output_size_in_bytes
    + mem.temp_size_in_bytes
    - mem.alias_size_in_bytes
  )
  train_state, metrics = step(train_state, {}, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    train_state, metrics = step(train_state, {}, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  tokens = batch["shots"].shot_id_BxL.size
  return (name, attention, remat, tokens, compile_s, 1e3 * float(np.median(times)), peak / 1e6)


def part_steps():
  print("\n## Train step on one CPU device (fp32 tiny / mid; step = loss + grads + AdamW)\n")
  print("| config | self-attn | remat | tokens/batch | compile s | step ms | peak MB |")
  print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
  for name in ("tiny", "mid"):
    for attention in ("full", "sparse"):
      for remat in ("none", "full"):
        row = step_row(name, attention, remat)
        print("| {} | {} | {} | {} | {:.1f} | {:.1f} | {:.1f} |".format(*row), flush=True)


def _a14b(num_layers=None, remat="full"):
  config = wan22_t2v_a14b.get_config(f"remat={remat}")
  if num_layers is not None:
    config.model.num_layers = num_layers
  return config, WanDiT(DiTConfig.from_config(config.model))


def _compiled_temp(num_layers, frames):
  """Compiled temp bytes of grad(loss) for the A14B expert at `num_layers`, one device, CPU."""
  config, model = _a14b(num_layers)
  params = jax.eval_shape(lambda k: {"params": meta.unbox(dit.init_fn(model.config)(k))},
                          jax.random.key(0))  # fmt: skip
  grid = layout.LatentGrid(frames, 60, 104)
  shots = layout.make_batch([layout.ShotLayout.single_shot(grid)],
                            [layout.TextWindows((0, 5), ((5, 10),))], text_len=512)  # fmt: skip
  batch = dict(
    latents=jax.ShapeDtypeStruct((1, frames, 60, 104, 16), jnp.float32),
    context=jax.ShapeDtypeStruct((1, 512, 4096), jnp.float32),
    shots=shots,
  )
  fm = loss_lib.FlowMatching()
  grad = jax.jit(
    jax.grad(lambda p, b: loss_lib.flow_matching_loss(model.apply, p, b, jax.random.key(0), fm)[0])
  )
  return grad.lower(params, batch).compile().memory_analysis().temp_size_in_bytes


def part_plan():
  config, model = _a14b()
  c = model.config
  tx, _ = state.optimizer(config.train)
  abstract, specs = sharding.abstract_params(state.init_fn(model, tx), jax.random.key(0))
  rules = config.logical_rules
  d, f, layers = c.dim, c.ffn_dim, c.num_layers
  layer_params = sum(
    math.prod(x.shape[1:]) for x in jax.tree.leaves(abstract.params["params"]["blocks"])
  )
  tokens = 61 * 30 * 52
  ws_per_token = 2 * (6 * d * 4 + 8 * d * 2 + f * (2 + 4))
  print(f"\n## A14B expert memory plan per device ({tokens:,} tokens per sample, remat=full)\n")
  print("| mesh | params fp32 | grads fp32 | Adam mu+nu | gathered layer weights | saved residuals"
        " | layer working set | total GB |")  # fmt: skip
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  for label, sizes in (("64 chips: fsdp 64", dict(fsdp=64)),
                       ("256 chips: fsdp 64 x context 4", dict(fsdp=64, context=4))):  # fmt: skip
    p = sharding.bytes_per_device(abstract.params, specs.params, sizes, rules)
    o = sharding.bytes_per_device(abstract.opt_state, specs.opt_state, sizes, rules)
    local = tokens / sizes.get("context", 1)  # one sample per (data x fsdp) group
    saved = layers * local * d * 2
    ws = local * ws_per_token
    gathered = 2 * layer_params * 2  # this and the next layer's bf16 weights, all-gathered
    total = 2 * p + o + gathered + saved + ws
    print(f"| {label} | {p / GB:.2f} | {p / GB:.2f} | {o / GB:.2f} | {gathered / GB:.2f} | "
          f"{saved / GB:.2f} | {ws / GB:.2f} | {total / GB:.2f} |")  # fmt: skip
  print(
    f"\nbf16 weights per layer {layer_params * 2 / GB:.3f} GB; working set "
    f"{ws_per_token / 1e3:.0f} KB/token; saved residual {2 * d / 1e3:.1f} KB/token/layer"
  )

  print("\nCheck vs XLA compiled memory (CPU, 1 latent frame = 1560 tokens, remat=full):")
  one, two = _compiled_temp(1, 1), _compiled_temp(2, 1)
  model_slope = layer_params * 2 + 1560 * d * 2
  print(f"| per-layer temp | compiled {(two - one) / GB:.3f} GB | model {model_slope / GB:.3f} GB "
        f"| ratio {(two - one) / model_slope:.2f} |")  # fmt: skip


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--part", choices=["steps", "plan", "all"], default="all")
  args = p.parse_args()
  if args.part in ("steps", "all"):
    part_steps()
  if args.part in ("plan", "all"):
    part_plan()


if __name__ == "__main__":
  main()
