"""LoRA in the DiT: zero adapters are the base model, adapters equal their merged weights, trees
split / merge / quantize into the declared layout, and the LoRA + int8 forward lowers for TPU."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from flax.core import meta

from configs import tiny
from holocine_jax import sharding
from holocine_jax.model import dit, lora
from holocine_jax.model.config import BLOCK_LINEARS, DiTConfig
from holocine_jax.model.dit import WanDiT
from tests import support

B, F, H, W, C, T = 2, 3, 4, 4, 4, 5


def _config(arg="lora=4", **changes) -> DiTConfig:
  return dataclasses.replace(DiTConfig.from_config(tiny.get_config(arg).model), **changes)


def _inputs():
  return support.dit_inputs((B, F, H, W, C), T)


def _init(config: DiTConfig, seed=0):
  """Plain (unboxed) params of `config`."""
  return meta.unbox(dit.init_fn(config)(jax.random.key(seed)))


def _random_adapters(adapters, seed=1):
  """Nonzero lora_a and lora_b (init leaves lora_b at zero)."""
  leaves, treedef = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
    treedef, [0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  )


def _f32(tree):
  return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


@pytest.mark.parametrize("scan", [True, False])
def test_zero_adapters_are_the_base_model(scan):
  config = _config(scan_layers=scan)
  params = _init(config)
  base, adapters = lora.split(params)
  assert all(
    not np.any(b) for p, b in traverse_util.flatten_dict(adapters).items() if p[-1] == "lora_b"
  )
  out = WanDiT(config).apply({"params": params}, *_inputs())
  want = WanDiT(lora.plain_config(config)).apply({"params": base}, *_inputs())
  np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("scan", [True, False])
def test_adapters_equal_their_merged_weights(scan):
  config = _config(scan_layers=scan, lora_alpha=6.0)
  base, adapters = lora.split(_init(config))
  adapters = _random_adapters(adapters)
  out = WanDiT(config).apply({"params": lora.merge(base, adapters)}, *_inputs())
  merged = jax.jit(lora.merge_adapters, static_argnums=2)(_f32(base), adapters, config)
  want = WanDiT(lora.plain_config(config)).apply({"params": merged}, *_inputs())
  base_out = WanDiT(lora.plain_config(config)).apply({"params": base}, *_inputs())
  assert support.rel_err(out, base_out) > 1e-2  # the adapters matter
  assert support.rel_err(out, want) < 1e-5
