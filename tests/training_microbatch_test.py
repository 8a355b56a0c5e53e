"""Gradient accumulation: a step over N sequential microbatches makes the same update as the
whole batch (up to float error), with the batch sharded over devices; bad settings are refused."""

import jax
import numpy as np
import pytest

from configs import tiny
from holocine_jax import sharding
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT
from holocine_jax.training import loop, state
from holocine_jax.training import step as step_lib
from tests import support


def _step(microbatches: int):
  """(params before, params after one step from the same init, its loss) with `microbatches`."""
  config = tiny.get_config("batch=8")
  config.data.frame_choices = (17,)
  config.mesh.fsdp = 2
  config.train.warmup_steps = 0  # a full learning rate at the first step
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:2])
  model = WanDiT(DiTConfig.from_config(config.model))
  tx, _ = state.optimizer(config.train)
  train_state, shardings = state.create(model, tx, mesh, config.logical_rules, jax.random.key(0))
  before = jax.device_get(train_state.params)
  new_state, losses, _ = support.run_steps(
    config, mesh, model, train_state, shardings, 1, microbatches=microbatches
  )
  return before, jax.device_get(new_state.params), losses[0]


def _largest_difference(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


def test_microbatches_make_the_whole_batch_update():
  before, whole_params, whole_loss = _step(1)
  _, split_params, split_loss = _step(4)
  np.testing.assert_allclose(split_loss, whole_loss, rtol=2e-5)
  # Adam's first step moves every param by about the learning rate (2e-3) whatever the gradient's
  # size, so float error in a near-zero gradient shows up as a small part of a step
  assert _largest_difference(before, whole_params) > 1e-3
  assert _largest_difference(split_params, whole_params) < 5e-5


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
