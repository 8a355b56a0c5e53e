"""DiT, train-state init and the sampler on a deviceless TPU mesh: shapes and a TPU compile, no
eager op."""

import jax
import jax.numpy as jnp
import pytest
from flax.core import meta
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import tiny
from holocine_jax import sharding, topology
from holocine_jax.model import dit
from holocine_jax.model.config import DiTConfig
from holocine_jax.sampling.pipeline import Sampler, SamplerConfig
from holocine_jax.training import state


@pytest.fixture(scope="module")
def tpu_mesh():
  """data=2 x fsdp=2 over the 4 chips of a v5p-8 that is not attached (only libtpu's topology)."""
  return sharding.make_mesh(dict(data=2, fsdp=2), devices=topology.devices("v5p-8"))


@pytest.mark.parametrize("arg", ["", "attention=sparse,impl=kernel"])
def test_dit_init_lowers_on_a_deviceless_tpu_mesh(tpu_mesh, arg):
  config = tiny.get_config(arg)
  key = jax.eval_shape(jax.random.key, 0)
  with sharding.activate(tpu_mesh, config.logical_rules):
    init = dit.init_fn(DiTConfig.from_config(config.model))  # building it runs no op either
    abstract = jax.eval_shape(init, key)
    shardings = sharding.shardings_for(abstract, tpu_mesh, config.logical_rules)
    compiled = jax.jit(init, out_shardings=shardings).lower(key).compile()
  out = meta.unbox(compiled.output_shardings)
  assert jax.tree.structure(out) == jax.tree.structure(meta.unbox(abstract))
  embedding = out["patch_embedding"]["kernel"]
  assert embedding.mesh.devices.flat[0].platform == "tpu"


def test_train_state_init_lowers_on_a_deviceless_tpu_mesh(tpu_mesh):
  config = tiny.get_config("attention=sparse,impl=kernel")
  model = dit.WanDiT(DiTConfig.from_config(config.model))
  key = jax.eval_shape(jax.random.key, 0)
  with sharding.activate(tpu_mesh, config.logical_rules):
    tx, _ = state.optimizer(config.train)
    init = state.init_fn(model, tx)
    abstract = jax.eval_shape(init, key)
    shardings = sharding.shardings_for(abstract, tpu_mesh, config.logical_rules)
    jax.jit(init, out_shardings=shardings).lower(key).compile()
  assert meta.unbox(abstract).step.shape == ()


def test_sampler_builds_and_its_stage_compiles_on_a_deviceless_tpu_mesh(tpu_mesh):
  config = tiny.get_config("impl=reference")  # the sampler is under test, not the TPU kernel
  rules, model = config.logical_rules, dit.WanDiT(DiTConfig.from_config(config.model))
  c = model.config
  b, f, h, w, text_len = 4, 3, 4, 4, 16  # b scenes: whole shards of data x fsdp
  batch = NamedSharding(tpu_mesh, P(sharding.batch_axes(rules)))
  replicated = NamedSharding(tpu_mesh, P())
  abstract = lambda shape, s=batch: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=s)
  noise, context = abstract((b, f, h, w, c.in_channels)), abstract((2 * b, text_len, c.text_dim))
  x, t_2B = abstract((2 * b, f, h, w, c.in_channels)), abstract((2 * b,))
  with sharding.activate(tpu_mesh, rules):
    sampler = Sampler(model, SamplerConfig("unipc", 4, 12.0))  # schedule tables stay on the host
    boxed = jax.eval_shape(model.init, jax.eval_shape(jax.random.key, 0), x, t_2B, context)
  params = jax.tree.map(  # unboxed outside the mesh: unboxing applies sharding constraints
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    meta.unbox(boxed),
    meta.unbox(sharding.shardings_for(boxed, tpu_mesh, rules)),
  )
  denoise_state = jax.tree.map(
    lambda a: abstract(a.shape), jax.eval_shape(sampler.schedule.init, noise)
  )
  step = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
  with sharding.activate(tpu_mesh, rules):
    compiled = sampler.stage.lower(
      params, sampler.schedule, denoise_state, context, None, step, step, abstract((), replicated)
    ).compile()
  assert 0 < sampler.split < 4
  assert compiled.output_shardings[0].mesh.devices.flat[0].platform == "tpu"
