"""Few-step sampling: guidance 1 runs no negative pass; the step-distill preset samples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from holocine_jax import config_file, layout
from holocine_jax.layout import LatentGrid, ShotLayout, TextWindows
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT
from holocine_jax.sampling.pipeline import Sampler, SamplerConfig

B, F, H, W, C, T, E = 2, 3, 4, 6, 4, 16, 24
ONE = jnp.float32(1)  # guidance as the sampler passes it (no retrace)


class _Counting:
  """The DiT, recording the rows it is traced with (once per compiled stage)."""

  def __init__(self, model):
    self.model, self.rows = model, []

  def apply(self, params, x, *args):
    self.rows.append(x.shape[0])
    return self.model.apply(params, x, *args)


def _scene():
  """A tiny DiT's params, noise for B scenes and 2B rows of context and shots (CFG)."""
  model = WanDiT(DiTConfig.from_config(tiny.get_config("").model))
  lay = ShotLayout((0, 1, 3), LatentGrid(F, H, W).tokens_per_frame)
  wins = [TextWindows((0, 3), ((3, 6), (6, 9)))] * B + [None] * B
  shots = layout.make_batch([lay] * 2 * B, wins, text_len=T)
  ctx = np.random.RandomState(1).randn(2 * B, T, E).astype(np.float32)
  noise = np.asarray(jax.random.normal(jax.random.key(7), (B, F, H, W, C)))
  params = model.init(jax.random.key(0), noise.repeat(2, 0), np.zeros((2 * B,)), ctx, shots)
  return model, params, noise, ctx, shots


def _sampler(model, config):
  sampler = Sampler(model, config)
  sampler.model = _Counting(model)  # before the first trace
  return sampler


@pytest.mark.slow  # two stage compiles (positive rows, CFG rows)
def test_guidance_one_runs_the_positive_rows_only_and_equals_cfg_at_one():
  model, params, noise, ctx, shots = _scene()
  sampler = _sampler(model, SamplerConfig(num_steps=4, guidance_high=1.0, guidance_low=3.0))
  sch, split = sampler.schedule, sampler.split
  assert 0 < split < sch.num_steps and sampler.config.rows_per_scene == 2
  got = sampler(params, None, noise, ctx, shots)
  assert sampler.model.rows == [B, 2 * B]  # high expert: positive rows only; low expert: CFG
  positive = jax.tree.map(lambda x: x[:B], (ctx, shots))
  alone = sampler.stage(params, sch, sch.init(noise), *positive, 0, split, ONE)
  cfg_at_one = sampler.stage(params, sch, sch.init(noise), ctx, shots, 0, split, ONE)
  scale = np.abs(cfg_at_one[0]).max()
  np.testing.assert_allclose(alone[0], cfg_at_one[0], rtol=0, atol=1e-5 * scale)
  want = sampler.stage(params, sch, alone, ctx, shots, split, sch.num_steps, jnp.float32(3))[0]
  np.testing.assert_array_equal(got, want)
  assert sampler.model.rows == [B, 2 * B]  # no other compile


def test_distill_preset_samples_the_tiny_model_in_four_positive_passes():
  config = SamplerConfig.from_config(config_file.load("configs/holocine_a14b.py:distill=4").sampler)
  assert (config.num_steps, config.shift, config.guidance_high, config.guidance_low) == (4, 5, 1, 1)
  assert config.rows_per_scene == 1
  model, params, noise, ctx, shots = _scene()
  sampler = _sampler(model, config)
  np.testing.assert_allclose(sampler.schedule.timesteps_N, [1000, 937.5, 833.333, 625], rtol=1e-6)
  assert sampler.split == 2  # lightx2v's boundary_step_index: 2 high-noise steps, 2 low-noise
  calls = []
  low = lambda: calls.append("low") or params
  latents = sampler(lambda: calls.append("high") or params, low, noise, ctx, shots)
  assert calls == ["high", "low"] and sampler.model.rows == [B]
  assert latents.shape == noise.shape and np.isfinite(np.asarray(latents)).all()
