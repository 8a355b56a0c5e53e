"""LoRA in the DiT: zero adapters are the base model, adapters equal their merged weights, trees
split / merge / quantize into the declared layout, and the LoRA + int8 forward lowers for TPU."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from flax.core import meta
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import tiny
from holocine_jax import sharding, topology
from holocine_jax.model import dit, lora, quant
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
  init = jax.jit(dit.init_fn(config), compiler_options=support.FAST_COMPILE)
  return meta.unbox(init(jax.random.key(seed)))


def _forward(config: DiTConfig, params):
  """The DiT of `config` on `params` (jitted) for the test inputs."""
  apply = lambda p, *inputs: WanDiT(config).apply({"params": p}, *inputs)
  return jax.jit(apply, compiler_options=support.FAST_COMPILE)(params, *_inputs())


def _random_adapters(adapters, seed=1):
  """Nonzero lora_a and lora_b (init leaves lora_b at zero)."""
  leaves, treedef = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
    treedef,
    [0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)],
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
  out = _forward(config, params)
  want = _forward(lora.plain_config(config), base)
  np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("scan", [True, False])
def test_adapters_equal_their_merged_weights(scan):
  config = _config(scan_layers=scan, lora_alpha=6.0)
  base, adapters = lora.split(_init(config))
  adapters = _random_adapters(adapters)
  out = _forward(config, lora.merge(base, adapters))
  merged = jax.jit(lora.merge_adapters, static_argnums=2)(_f32(base), adapters, config)
  want = _forward(lora.plain_config(config), merged)
  blocks = "blocks" if scan else "blocks_0"
  ffn_in = [tree[blocks]["ffn_in"]["kernel"] for tree in (merged, base)]
  assert support.rel_err(*ffn_in) > 1e-2  # the adapters matter
  assert support.rel_err(out, want) < 1e-5


@pytest.mark.parametrize("scan,layers", [(True, 1), (False, 2)])
def test_split_and_merge_round_trip(scan, layers):
  params = _init(_config(scan_layers=scan))
  base, adapters = lora.split(params)
  flat = traverse_util.flatten_dict(adapters)
  assert len(flat) == 2 * len(BLOCK_LINEARS) * layers
  assert {p[-1] for p in flat} == {"lora_a", "lora_b"}
  assert not any(lora.is_adapter(p) for p in traverse_util.flatten_dict(base))
  assert jax.tree.structure(lora.merge(base, adapters)) == jax.tree.structure(params)
  with pytest.raises(ValueError, match="in both the base and the adapters"):
    lora.merge(params, adapters)


def _abstract(arg):
  return sharding.abstract_params(dit.init_fn(_config(arg)), jax.random.key(0))


def test_abstract_tree_declares_base_quantized_kernels_and_fp32_adapters():
  abstract, specs = _abstract("lora=4,lora_base=int8")
  flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(abstract).items()}
  axes = {"/".join(k): v for k, v in traverse_util.flatten_dict(specs).items()}
  q, o = "blocks/self_attn/q", "blocks/cross_attn/o"
  assert flat[f"{q}/kernel"].dtype == jnp.int8 and flat[f"{q}/kernel"].shape == (2, 32, 2, 16)
  assert flat[f"{q}/kernel_scale"].dtype == jnp.float32
  assert flat[f"{q}/kernel_scale"].shape == (2, 2, 16)
  assert flat[f"{o}/lora_a"].shape == (2, 2, 16, 4) and flat[f"{o}/lora_a"].dtype == jnp.float32
  assert tuple(axes[f"{o}/lora_a"]) == ("layers", "heads", "kv", "lora_rank")
  assert tuple(axes[f"{o}/lora_b"]) == ("layers", "lora_rank", "embed")
  assert flat["blocks/ffn_in/bias"].dtype == jnp.bfloat16
  assert flat["patch_embedding/kernel"].dtype == jnp.bfloat16  # outside the blocks: not quantized
  kernels = {k for k, v in flat.items() if v.dtype == jnp.int8}
  assert len(kernels) == len(BLOCK_LINEARS)
  nf4, _ = _abstract("lora=4,lora_base=nf4")
  nf4 = {"/".join(k): v for k, v in traverse_util.flatten_dict(nf4).items()}
  assert nf4[f"{o}/kernel"].dtype == jnp.uint4 and nf4[f"{o}/kernel_scale"].shape == (2, 2, 1, 32)


def test_merge_adapters_dequantizes_a_quantized_base():
  config = _config("lora=4,lora_base=nf4", lora_alpha=2.0)
  base, adapters = lora.split(_init(config))
  adapters = _random_adapters(adapters)
  merged = lora.merge_adapters(base, adapters, config, scale=0.5)
  assert not any(k[-1] == "kernel_scale" for k in traverse_util.flatten_dict(merged))
  stored = base["blocks"]["cross_attn"]["o"]
  a, b = (np.asarray(adapters["blocks"]["cross_attn"]["o"][n]) for n in ("lora_a", "lora_b"))
  w = np.stack(
    [
      quant.dequantize(c, s, "nf4", 2, jnp.float32)
      for c, s in zip(stored["kernel"], stored["kernel_scale"], strict=True)
    ]
  )
  want = w + 0.5 * (2.0 / 4) * np.einsum("lhkr,lrd->lhkd", a, b)
  got = merged["blocks"]["cross_attn"]["o"]["kernel"]
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2, atol=1e-2)
  with pytest.raises(ValueError, match="not block Linears"):
    lora.merge_adapters(base, {"head": {"lora_a": a, "lora_b": b}}, config)


@pytest.mark.parametrize(
  "change,match",
  [
    (dict(lora_rank=-1), "lora_rank must be an integer >= 0"),
    (dict(lora_targets=("self_attn/q", "attn1.to_q")), r"unknown lora_targets \['attn1.to_q'\]"),
    (dict(lora_base="fp8"), "lora_base must be one of"),
    (dict(lora_rank=0), "lora_base='int8' quantizes a LoRA's frozen base: set lora_rank"),
  ],
)
def test_bad_lora_fields(change, match):
  with pytest.raises(ValueError, match=match):
    _config("lora=4,lora_base=int8", **change)


@pytest.mark.parametrize("base", ["int8", "nf4"])
def test_lora_train_step_lowers_on_a_deviceless_tpu_mesh(base):
  """Forward and adapter gradients of the LoRA + quantized tiny DiT compile for TPU (v5p-8)."""
  config = _config(f"lora=4,lora_base={base},remat=full,impl=reference")
  rules = tiny.get_config("").logical_rules
  mesh = sharding.make_mesh(dict(data=2, fsdp=2), devices=topology.devices("v5p-8"))
  with sharding.activate(mesh, rules):
    boxed = jax.eval_shape(dit.init_fn(config), jax.eval_shape(jax.random.key, 0))
  params = jax.tree.map(  # unboxed outside the mesh: unboxing applies sharding constraints
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    meta.unbox(boxed),
    meta.unbox(sharding.shardings_for(boxed, mesh, rules)),
  )
  base, adapters = lora.split(params)
  batch = NamedSharding(mesh, P(sharding.batch_axes(rules)))
  inputs = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch) for x in _inputs()]
  inputs[0] = jax.ShapeDtypeStruct((4, F, H, W, C), jnp.float32, sharding=batch)
  inputs[1] = jax.ShapeDtypeStruct((4,), jnp.float32, sharding=batch)
  inputs[2] = jax.ShapeDtypeStruct((4, T, 24), jnp.float32, sharding=batch)

  def loss(adapters, base, x, t, ctx):
    out = WanDiT(config).apply({"params": lora.merge(base, adapters)}, x, t, ctx)
    return jnp.mean(jnp.square(out - x))

  with sharding.activate(mesh, rules):
    compiled = jax.jit(jax.grad(loss)).lower(adapters, base, *inputs).compile()
  grads = compiled.output_shardings
  assert jax.tree.structure(grads) == jax.tree.structure(adapters)
  assert jax.tree.leaves(grads)[0].mesh.devices.flat[0].platform == "tpu"


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("base", ["bf16", "int8", "nf4"])
def test_quantize_base_gives_the_declared_layout(scan, base):
  """A plain float tree (as loaded from a converted folder) -> exactly the base init declares."""
  config = _config(f"lora=4,lora_base={base}", scan_layers=scan)
  plain, _ = sharding.abstract_params(dit.init_fn(lora.plain_config(config)), jax.random.key(0))
  want = lora.split(sharding.abstract_params(dit.init_fn(config), jax.random.key(0))[0])[0]
  got = jax.eval_shape(lambda p: lora.quantize_base(p, config), plain)
  layout = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert layout(got) == layout(want)
