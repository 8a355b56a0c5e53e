"""DiT and train-state init on a deviceless TPU mesh: shapes and a TPU compile, no eager op."""

import jax
import pytest
from flax.core import meta

from configs import tiny
from holocine_jax import sharding, topology
from holocine_jax.model import dit
from holocine_jax.model.config import DiTConfig
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
  embedding = out["params"]["patch_embedding"]["kernel"]
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
