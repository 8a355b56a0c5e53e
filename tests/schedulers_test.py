"""Schedulers: UniPC vs diffusers on a fixed model-output sequence; Euler vs HoloCine's
FlowMatchScheduler formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from holocine_jax.sampling import schedulers


def _model(x, i):
  """A state-dependent stand-in for the DiT so errors would compound along the trajectory."""
  rng = np.random.RandomState(100 + i)
  return 0.7 * x + rng.randn(*x.shape).astype(np.float32)


def _run_ours(schedule, x0):
  state = schedule.init(jnp.asarray(x0))
  xs = []
  for i in range(schedule.num_steps):
    state = schedule.step(state, i, jnp.asarray(_model(np.asarray(state[0]), i)))
    xs.append(np.asarray(state[0]))
  return np.stack(xs)


@pytest.mark.parametrize(("steps", "shift"), [(40, 12.0), (5, 12.0), (3, 3.0), (1, 5.0)])
def test_unipc_matches_diffusers(steps, shift):
  ref = UniPCMultistepScheduler(
    use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift
  )
  ref.set_timesteps(steps)
  x0 = np.random.RandomState(0).randn(2, 3, 4, 5).astype(np.float32)
  x = torch.from_numpy(x0)
  want = []
  for i, t in enumerate(ref.timesteps):
    x = ref.step(torch.from_numpy(_model(x.numpy(), i)), t, x).prev_sample
    want.append(x.numpy())
  ours = schedulers.unipc(steps, shift)
  np.testing.assert_array_equal(np.asarray(ours.timesteps_N), ref.timesteps.numpy())
  got = _run_ours(ours, x0)
  # float64 host coefficients vs diffusers float32 arithmetic: measured <= 6.1e-7 relative.
  scale = np.abs(np.stack(want)).max()
  assert np.abs(got - np.stack(want)).max() / scale < 2e-5


def _holocine_flow_match(steps, shift):
  """HoloCine's FlowMatchScheduler(shift=5, sigma_min=0.0, extra_one_step=True), retyped."""
  sigmas = torch.linspace(1.0, 0.0, steps + 1)[:-1]
  sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
  return sigmas, sigmas * 1000


def _assert_euler_matches(ours, timesteps, x0, step):
  """Our schedule has the reference's timesteps and ends where `step(x, i)` walks x0 to."""
  np.testing.assert_allclose(np.asarray(ours.timesteps_N), timesteps.numpy(), rtol=1e-6)
  x = torch.from_numpy(x0)
  for i in range(ours.num_steps):
    x = step(x, i)
  got = _run_ours(ours, x0)[-1]
  np.testing.assert_allclose(got, x.numpy(), rtol=0, atol=2e-5 * np.abs(x.numpy()).max())


@pytest.mark.parametrize("steps", [50, 7])
def test_euler_matches_holocine(steps):
  sigmas, timesteps = _holocine_flow_match(steps, 5.0)

  def step(x, i):
    sigma_next = sigmas[i + 1] if i + 1 < steps else 0.0
    return x + torch.from_numpy(_model(x.numpy(), i)) * (sigma_next - sigmas[i])

  x0 = np.random.RandomState(1).randn(4, 6).astype(np.float32)
  _assert_euler_matches(schedulers.euler(steps, 5.0), timesteps, x0, step)


def _lightx2v_step_distill(step_list, shift):
  """lightx2v's WanStepDistillScheduler tables, retyped: (timesteps, sigmas) of the list."""
  sigmas = torch.linspace(1.0, 0.0, 1001)[:-1]
  sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
  index = [1000 - t for t in step_list]
  return sigmas[index] * 1000, sigmas[index]


@pytest.mark.parametrize("step_list", [[1000, 750, 500, 250], [1000, 900, 600, 300, 50]])
def test_euler_at_matches_lightx2v_step_distill(step_list):
  timesteps, sigmas = _lightx2v_step_distill(step_list, 5.0)

  def step(x, i):  # step_post: x0 = x - s v, then x0 + s_next v unless last
    v = torch.from_numpy(_model(x.numpy(), i))
    return x - sigmas[i] * v + (sigmas[i + 1] * v if i + 1 < len(step_list) else 0.0)

  x0 = np.random.RandomState(2).randn(4, 6).astype(np.float32)
  _assert_euler_matches(schedulers.euler_at(step_list, 5.0), timesteps, x0, step)


def test_even_step_list_is_holocine_euler():
  """lightx2v's 4-step list is HoloCine's Euler at 4 steps (the distill preset's schedule)."""
  listed, even = schedulers.make("euler", 4, 5.0, (1000, 750, 500, 250)), schedulers.euler(4, 5.0)
  for field in ("timesteps_N", "sigmas_N", "predictor_Nx4"):
    np.testing.assert_array_equal(getattr(listed, field), getattr(even, field))


def test_step_is_jittable_in_the_step_index():
  schedule = schedulers.unipc(6, 12.0)

  @jax.jit
  def run(x):
    def body(i, state):
      return schedule.step(state, i, 0.7 * state[0] + 0.1)

    return jax.lax.fori_loop(0, schedule.num_steps, body, schedule.init(x))[0]

  x = jnp.ones((3,))
  eager = schedule.init(x)
  for i in range(schedule.num_steps):
    eager = schedule.step(eager, i, 0.7 * eager[0] + 0.1)
  np.testing.assert_allclose(run(x), eager[0], rtol=1e-6)


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown scheduler"):
    schedulers.make("ddim", 10, 5.0)
  with pytest.raises(ValueError, match="num_steps must be >= 1"):
    schedulers.make("euler", 0, 5.0)
  with pytest.raises(ValueError, match="sampler.timesteps lists 2 steps but 3 are asked for"):
    schedulers.make("euler", 3, 5.0, (1000, 500))
  with pytest.raises(ValueError, match="scheduler must be 'euler', not 'unipc'"):
    schedulers.make("unipc", 2, 5.0, (1000, 500))
  with pytest.raises(ValueError, match=r"must decrease within \(0, 1000\]"):
    schedulers.euler_at([1000, 1000, 500])
  with pytest.raises(ValueError, match=r"must decrease within \(0, 1000\]"):
    schedulers.euler_at([1200, 500])
