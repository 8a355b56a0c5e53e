"""Flow-matching loss, shifted timesteps, expert ranges, schedule, config-file loading."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from holocine_jax import config_file, timesteps
from holocine_jax.training import loss as loss_lib
from holocine_jax.training import state


def test_shift_and_inverse():
  u = np.linspace(0, 1, 11)
  s = timesteps.shift(u, 5.0)
  np.testing.assert_allclose(timesteps.unshift(s, 5.0), u, atol=1e-12)
  assert s[5] == pytest.approx(5 * 0.5 / (1 + 4 * 0.5))


@pytest.mark.parametrize("expert", ["high", "low", "all"])
def test_expert_timestep_ranges(expert):
  train = tiny.get_config(f"expert={expert}").train
  fm = loss_lib.FlowMatching.from_config(train)
  t = 1000 * np.asarray(fm.sample_sigma(jax.random.key(0), 4096))
  if expert == "high":
    assert t.min() >= 875 and t.max() <= 1000
  elif expert == "low":
    assert t.max() < 875 and t.min() >= 0
  else:
    assert t.min() < 100 and t.max() > 950
  # Shift 5 puts most samples at high noise: P(s' >= 0.875) = 1 - unshift(0.875) = 0.4167.
  if expert == "all":
    assert np.mean(t >= 875) == pytest.approx(1 - 0.875 / (5 - 4 * 0.875), abs=0.03)


def test_loss_is_zero_for_the_exact_velocity_and_uses_1000s():
  x0 = jax.random.normal(jax.random.key(1), (3, 2, 4, 4, 4))
  batch = dict(latents=x0, context=jnp.zeros((3, 2, 8)), shots=None)
  fm = loss_lib.FlowMatching(shift=3.0)

  def oracle(params, xt, t, context, shots):
    s = (t / 1000.0).reshape(-1, 1, 1, 1, 1)
    noise = (xt - (1 - s) * x0) / s  # x_t = (1 - s) x0 + s noise
    return noise - x0

  loss, _ = loss_lib.flow_matching_loss(oracle, None, batch, jax.random.key(2), fm)
  assert float(loss) < 1e-8
  zero, _ = loss_lib.flow_matching_loss(
    lambda p, xt, *_: jnp.zeros_like(xt), None, batch, jax.random.key(2), fm
  )
  assert float(zero) > 1.0  # E|noise - x0|^2 = 2


def test_learning_rate_warmup_then_cosine():
  train = tiny.get_config("steps=100,lr=1e-3").train
  schedule = state.learning_rate(train)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(0.5e-3)
  assert float(schedule(20)) == pytest.approx(1e-3)
  assert float(schedule(100)) == pytest.approx(1e-4)


def test_config_file_loading_and_overrides(tmp_path):
  config = config_file.load(
    "configs/tiny.py:attention=sparse,steps=7", ["train.learning_rate=3e-4", "data.seed=2"]
  )
  assert config.model.self_attention == "sparse"
  assert config.train.num_steps == 7 and config.train.learning_rate == 3e-4
  assert config.data.seed == 2
  with pytest.raises(KeyError, match="unknown key"):
    config_file.load("configs/tiny.py", ["train.nope=1"])
  with pytest.raises(FileNotFoundError):
    config_file.load(str(tmp_path / "missing.py"))
