"""Helpers shared by tests: the repo root, fast-compile XLA flags, a session compile cache, DiT
inputs, and tiny torch models (umT5, Wan VAE, Wan DiT state dicts) with their on-disk layouts."""

import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "launch"))

import local_multihost  # noqa: E402, F401  (re-exported: the multi-process launcher)

# Cheaper CPU codegen (compile time dominates tiny-shape tests): as jit compiler_options, and as
# the same flags for a subprocess's XLA_FLAGS.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
FAST_XLA_FLAGS = " ".join(f"--{k}={str(v).lower()}" for k, v in FAST_COMPILE.items())


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a subprocess: `devices` virtual CPU devices and the fast-compile flags."""
  return f"--xla_force_host_platform_device_count={devices} {FAST_XLA_FLAGS}"


def session_cache_dir(tmp_path_factory):
  """A compilation cache shared by every xdist worker of this pytest session."""
  path = tmp_path_factory.getbasetemp().parent / "holocine_training_jax_cache"
  path.mkdir(exist_ok=True)
  return path


def rel_err(out, want) -> float:
  """max |out - want| / max |want|."""
  return float(np.abs(np.asarray(out) - want).max() / np.abs(want).max())


def dit_inputs(shape_BxFxHxWxC, text_len, seed=0):
  """Random latents, timesteps (999, 312.5) and text [B, text_len, 24] for a tiny DiT."""
  rng = np.random.RandomState(seed)
  x = rng.randn(*shape_BxFxHxWxC).astype(np.float32)
  t = np.array([999.0, 312.5], np.float32)
  ctx = rng.randn(shape_BxFxHxWxC[0], text_len, 24).astype(np.float32)
  return x, t, ctx


# ---------------------------------------------------------------------------------------------
# Tiny torch models (torch, diffusers and transformers are imported by the helpers that use them).

T5 = dict(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2)
MEAN, STD = (0.1, -0.2, 0.3, 0.0), (1.5, 0.7, 2.0, 1.0)
VAE = dict(base_dim=8, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1)

# A config file (configs/tiny.py with the tiny umT5 and VAE above) for converted folders.
CONFIG = f"""
from configs import tiny

def get_config(arg=None):
  config = tiny.get_config(arg)
  config.text_encoder = dict(**{T5!r}, param_dtype="float32", dtype="float32")
  config.vae = dict(**{VAE!r}, latents_mean={MEAN!r}, latents_std={STD!r})
  return config
"""


def t5_model():
  """A transformers UMT5EncoderModel of shape T5 with random weights (seed 0)."""
  import torch
  from transformers import UMT5Config, UMT5EncoderModel

  hf = UMT5Config(
    vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6,
  )  # fmt: skip
  torch.manual_seed(0)
  model = UMT5EncoderModel(hf).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * (0.3 if p.ndim == 2 else 0.2) + (p.ndim == 1))
  return model


def vae_model():
  """A diffusers AutoencoderKLWan of shape VAE with random norm gammas (seed 0)."""
  import torch
  from diffusers import AutoencoderKLWan

  torch.manual_seed(0)
  model = AutoencoderKLWan(
    **{**VAE, "dim_mult": list(VAE["dim_mult"])},
    temperal_downsample=[False, True, True],
    latents_mean=list(MEAN),
    latents_std=list(STD),
  ).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("gamma"):
        p.copy_(1 + 0.2 * torch.randn_like(p))
  return model


def state_dict(model):
  """A torch module's state dict, detached and contiguous."""
  return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


# transformers umT5 -> Wan's own T5 names (`ffn.gate.0` = GELU branch, `ffn.fc1` = linear one).
WAN_T5_NAMES = {
  "layer.0.layer_norm": "norm1", "layer.0.SelfAttention.q": "attn.q",
  "layer.0.SelfAttention.k": "attn.k", "layer.0.SelfAttention.v": "attn.v",
  "layer.0.SelfAttention.o": "attn.o", "layer.1.layer_norm": "norm2",
  "layer.0.SelfAttention.relative_attention_bias": "pos_embedding.embedding",
  "layer.1.DenseReluDense.wi_0": "ffn.gate.0", "layer.1.DenseReluDense.wi_1": "ffn.fc1",
  "layer.1.DenseReluDense.wo": "ffn.fc2",
}  # fmt: skip


def to_wan_names(hf_state: dict, num_layers: int) -> dict:
  """A transformers UMT5EncoderModel state dict under Wan's names (models_t5_umt5-xxl-enc)."""
  out = {
    "token_embedding.weight": hf_state["shared.weight"],
    "norm.weight": hf_state["encoder.final_layer_norm.weight"],
  }
  for i in range(num_layers):
    for hf_name, wan_name in WAN_T5_NAMES.items():
      out[f"blocks.{i}.{wan_name}.weight"] = hf_state[f"encoder.block.{i}.{hf_name}.weight"]
  return out


# diffusers -> original Wan names, as HoloCine's WanModelStateDictConverter.from_diffusers lists
# them (block 0 shown there; every block alike).
_BLOCK_TO_ORIGINAL = {
  "attn1.norm_k.weight": "self_attn.norm_k.weight",
  "attn1.norm_q.weight": "self_attn.norm_q.weight",
  "attn1.to_k.bias": "self_attn.k.bias",
  "attn1.to_k.weight": "self_attn.k.weight",
  "attn1.to_out.0.bias": "self_attn.o.bias",
  "attn1.to_out.0.weight": "self_attn.o.weight",
  "attn1.to_q.bias": "self_attn.q.bias",
  "attn1.to_q.weight": "self_attn.q.weight",
  "attn1.to_v.bias": "self_attn.v.bias",
  "attn1.to_v.weight": "self_attn.v.weight",
  "attn2.norm_k.weight": "cross_attn.norm_k.weight",
  "attn2.norm_q.weight": "cross_attn.norm_q.weight",
  "attn2.to_k.bias": "cross_attn.k.bias",
  "attn2.to_k.weight": "cross_attn.k.weight",
  "attn2.to_out.0.bias": "cross_attn.o.bias",
  "attn2.to_out.0.weight": "cross_attn.o.weight",
  "attn2.to_q.bias": "cross_attn.q.bias",
  "attn2.to_q.weight": "cross_attn.q.weight",
  "attn2.to_v.bias": "cross_attn.v.bias",
  "attn2.to_v.weight": "cross_attn.v.weight",
  "ffn.net.0.proj.bias": "ffn.0.bias",
  "ffn.net.0.proj.weight": "ffn.0.weight",
  "ffn.net.2.bias": "ffn.2.bias",
  "ffn.net.2.weight": "ffn.2.weight",
  "norm2.bias": "norm3.bias",
  "norm2.weight": "norm3.weight",
  "scale_shift_table": "modulation",
}
_TOP_TO_ORIGINAL = {
  "condition_embedder.text_embedder.linear_1.bias": "text_embedding.0.bias",
  "condition_embedder.text_embedder.linear_1.weight": "text_embedding.0.weight",
  "condition_embedder.text_embedder.linear_2.bias": "text_embedding.2.bias",
  "condition_embedder.text_embedder.linear_2.weight": "text_embedding.2.weight",
  "condition_embedder.time_embedder.linear_1.bias": "time_embedding.0.bias",
  "condition_embedder.time_embedder.linear_1.weight": "time_embedding.0.weight",
  "condition_embedder.time_embedder.linear_2.bias": "time_embedding.2.bias",
  "condition_embedder.time_embedder.linear_2.weight": "time_embedding.2.weight",
  "condition_embedder.time_proj.bias": "time_projection.1.bias",
  "condition_embedder.time_proj.weight": "time_projection.1.weight",
  "patch_embedding.bias": "patch_embedding.bias",
  "patch_embedding.weight": "patch_embedding.weight",
  "scale_shift_table": "head.modulation",
  "proj_out.bias": "head.head.bias",
  "proj_out.weight": "head.head.weight",
}


def original_name(key: str) -> str:
  """diffusers WanTransformer3DModel name -> original Wan name."""
  parts = key.split(".")
  if parts[0] == "blocks":
    return ".".join(parts[:2] + [_BLOCK_TO_ORIGINAL[".".join(parts[2:])]])
  return _TOP_TO_ORIGINAL[key]


def original_dit(model):
  """A diffusers WanTransformer3DModel's state dict under the original Wan names."""
  return {original_name(k): v for k, v in state_dict(model).items()}


def save_sharded(state, folder, name, shards=2):
  """safetensors shards plus a diffusers-style index.json."""
  from safetensors.torch import save_file

  os.makedirs(folder, exist_ok=True)
  keys = sorted(state)
  weight_map = {}
  for s in range(shards):
    file = f"{name}-{s + 1:05d}-of-{shards:05d}.safetensors"
    part = {k: state[k] for k in keys[s::shards]}
    save_file(part, os.path.join(folder, file))
    weight_map.update(dict.fromkeys(part, file))
  with open(os.path.join(folder, f"{name}.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)


# ---------------------------------------------------------------------------------------------
# Training from weights (train.init_from).


def write_converted(folder, model, experts=("high", "low"), seed=100) -> dict:
  """A converted folder as `holocine_jax.convert` writes it (one orbax checkpoint per expert and
  convert.json) holding random experts of the DiTConfig `model`; returns {expert: params}."""
  import dataclasses

  import jax
  from orbax.checkpoint.experimental import v1 as ocp

  from holocine_jax import sharding
  from holocine_jax.model import dit
  from holocine_jax.weights import store

  mesh = sharding.make_mesh({"fsdp": -1})
  params = {}
  for i, name in enumerate(experts):
    key = jax.random.key(seed + i)
    init = dit.init_fn(model)
    params[name], _ = sharding.init_sharded(init, mesh, sharding.DEFAULT_LOGICAL_RULES, key)
    ocp.save_pytree(os.path.join(folder, name), params[name])
  entry = dict(kind="dit", config=dataclasses.asdict(model))
  with open(os.path.join(folder, store.RECORD), "w") as f:
    json.dump(dict(format="diffusers", components=dict.fromkeys(experts, entry)), f)
  return params


def train_in(config, workdir, **kwargs):
  """loop.train with the workdir's config.json written first, as `holocine_jax.train` does."""
  from holocine_jax.training import loop
  from holocine_jax.weights import store

  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, store.CONFIG), "w") as f:
    f.write(config.to_json_best_effort())
  return loop.train(config, workdir, **kwargs)


def run_steps(
  config,
  mesh,
  model,
  train_state,
  shardings,
  num_steps,
  base=None,
  base_shardings=None,
  microbatches=1,
):
  """`num_steps` jitted train steps on the synthetic data from `train_state` (on a LoRA `base`,
  in `microbatches`); returns (state, losses, last batch)."""
  from holocine_jax.training import global_batch, loop, pipeline, state
  from holocine_jax.training import loss as loss_lib
  from holocine_jax.training import step as step_lib

  rules = config.logical_rules
  tx, schedule = state.optimizer(config.train)
  source, shapes = loop.open_source(config)
  rows = global_batch.host_rows(mesh, rules, config.train.global_batch)
  iterator = iter(pipeline.from_config(source, shapes, config, rows))
  host = next(iterator)
  batch_shardings = global_batch.shardings(host, mesh, rules)
  step = step_lib.make_train_step(
    model,
    tx,
    schedule,
    loss_lib.FlowMatching.from_config(config.train),
    seed=0,
    mesh=mesh,
    rules=rules,
    state_shardings=shardings,
    batch_shardings=batch_shardings,
    base_shardings=base_shardings,
    microbatches=microbatches,
  )
  losses = []
  for _ in range(num_steps):
    batch = global_batch.to_global(host, batch_shardings, config.train.global_batch, rows)
    train_state, metrics = step(train_state, base or {}, batch)
    losses.append(float(metrics["loss"]))
    host = next(iterator)
  return train_state, losses, batch
