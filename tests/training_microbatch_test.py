"""Gradient accumulation: a step over N sequential microbatches makes the same update as the
whole batch (up to float error), with the batch sharded over devices; bad settings are refused."""

import jax
import numpy as np
import pytest

from configs import tiny
from holocine_jax import sharding
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT
from holocine_jax.training import global_batch, loop, pipeline, state
from holocine_jax.training import loss as loss_lib
from holocine_jax.training import step as step_lib


def _step(microbatches: int):
  """(params after one step from the same init, metrics) with `microbatches`."""
  config = tiny.get_config("batch=8")
  config.data.frame_choices = (17,)
  config.mesh.fsdp = 2
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:2])
  rules = config.logical_rules
  model = WanDiT(DiTConfig.from_config(config.model))
  tx, schedule = state.optimizer(config.train)
  train_state, shardings = state.create(model, tx, mesh, rules, jax.random.key(0))
  source, shapes = loop.open_source(config)
  rows = global_batch.host_rows(mesh, rules, config.train.global_batch)
  host = next(iter(pipeline.from_config(source, shapes, config, rows)))
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
    microbatches=microbatches,
  )
  batch = global_batch.to_global(host, batch_shardings, config.train.global_batch, rows)
  new_state, metrics = step(train_state, {}, batch)
  return jax.device_get(new_state.params), jax.device_get(metrics)


def test_microbatches_make_the_whole_batch_update():
  whole_params, whole = _step(1)
  split_params, split = _step(4)
  for key in ("loss", "grad_norm", "timestep"):
    np.testing.assert_allclose(split[key], whole[key], rtol=2e-5, err_msg=key)
  assert whole["grad_norm"] > 0
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), split_params, whole_params
  )


def test_split_gives_every_microbatch_rows_from_every_block():
  x = np.arange(8)
  np.testing.assert_array_equal(step_lib.split(x, 4), [[0, 4], [1, 5], [2, 6], [3, 7]])


@pytest.mark.parametrize(
  ("settings", "shards", "message"),
  [
    (dict(microbatches=0), 1, "train.microbatches must be an integer >= 1, got 0"),
    (dict(microbatches=3), 1, "train.global_batch 8 is not a multiple of train.microbatches 3"),
    (dict(microbatches=8), 2, "a microbatch of train.global_batch / train.microbatches = 1"),
  ],
)
def test_bad_microbatches_are_refused(settings, shards, message):
  config = tiny.get_config("batch=8")
  config.train.update(settings)
  with pytest.raises(ValueError, match=message.replace("/", ".")):
    loop.check_config(config)
    loop.check_microbatches(config.train, shards)
