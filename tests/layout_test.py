"""ShotLayout / TextWindows / ShotBatch, the dense masks, and the sparse reference vs the
released per-shot algorithm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from holocine_jax import layout
from holocine_jax.attention import masks, reference
from holocine_jax.layout import LatentGrid, LayoutError, ShotLayout, TextWindows
from holocine_jax.scene import Scene, SceneError


def test_default_scene_at_480x832():
  s = Scene.create("g", list("abcde"), 241)
  grid = LatentGrid(61, 60, 104)
  lay = ShotLayout.from_scene(s, grid)
  assert grid.tokens_per_frame == 1560 and lay.num_tokens == 95160
  assert lay.latent_frames_per_shot() == (13, 12, 12, 12, 12)
  assert lay.token_bounds == (0, 20280, 39000, 57720, 76440, 95160)
  summary = lay.summary_tokens()
  assert summary.shape == (5 * 1560,)
  assert summary[1560] == 20280 and summary[-1] == 76440 + 1559
  ids = lay.shot_ids()
  assert ids[20279] == 0 and ids[20280] == 1 and ids[-1] == 4


def test_grid_errors():
  with pytest.raises(LayoutError, match="temporal patch of 1"):
    LatentGrid(5, 4, 4, patch=(2, 2, 2))
  with pytest.raises(LayoutError, match="not divisible by the patch"):
    LatentGrid(5, 5, 4)
  with pytest.raises(LayoutError, match="latent frames, but the latent grid has 6"):
    ShotLayout.from_scene(Scene.create("g", ["a"], 17), LatentGrid(6, 4, 4))
  with pytest.raises(LayoutError, match=">= 1 latent frame"):
    ShotLayout((0, 2, 2, 5), 4)


def test_batch_of_different_layouts_is_padded():
  lays = [ShotLayout((0, 2, 3, 7), 6), ShotLayout((0, 7), 6)]
  b = layout.make_batch(lays, max_shots=4)
  assert b.shot_id_BxL.shape == (2, 42) and b.summary_idx_BxG.shape == (2, 24)
  np.testing.assert_array_equal(b.shot_bounds_BxNx2[0], [[0, 12], [12, 18], [18, 42], [42, 42]])
  np.testing.assert_array_equal(b.shot_bounds_BxNx2[1], [[0, 42], [42, 42], [42, 42], [42, 42]])
  np.testing.assert_array_equal(b.summary_valid_BxG.sum(1), [18, 6])
  np.testing.assert_array_equal(b.summary_idx_BxG[0, :18], [*range(6), *range(12, 24)])
  with pytest.raises(LayoutError, match="same grid"):
    layout.make_batch([ShotLayout((0, 7), 6), ShotLayout((0, 6), 6)])
  with pytest.raises(LayoutError, match="max_shots=1"):
    layout.make_batch(lays, max_shots=1)


def test_text_windows_inclusive_end_and_padding():
  win = TextWindows(global_range=(0, 4), shot_ranges=((4, 7), (7, 9)))
  allow = win.allow_table(12)
  # global [0, 4] inclusive, shot 0 [4, 7], shot 1 [7, 9], padding after max end 9.
  np.testing.assert_array_equal(allow[0], [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1])
  np.testing.assert_array_equal(allow[1], [1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1])
  with pytest.raises(LayoutError, match="beyond text length"):
    win.allow_table(8)
  with pytest.raises(LayoutError, match="non-empty range"):
    TextWindows((0, 0), ((1, 2),))


def test_window_count_must_match_shots():
  with pytest.raises(SceneError, match="2 shot captions but the video layout has 3 shots"):
    layout.make_batch([ShotLayout((0, 1, 2, 3), 2)], [TextWindows((0, 2), ((2, 3), (3, 4)))])


def test_masks():
  lays = [ShotLayout((0, 2, 3), 2), ShotLayout((0, 3), 2)]
  wins = [TextWindows((0, 2), ((2, 4), (4, 5))), None]
  b = layout.make_batch(lays, wins, text_len=8)
  allow = np.asarray(masks.sparse_self_allow(b))
  assert allow.shape == (2, 6, 6 + 4)
  ids = np.asarray(b.shot_id_BxL)
  for e in range(2):
    for q in range(6):
      own = [ids[e, q] == ids[e, j] for j in range(6)]
      tail = [e == 0 or j < 2 for j in range(4)]
      np.testing.assert_array_equal(allow[e, q], own + tail)
  bias = np.asarray(masks.window_cross_bias(b))
  assert bias.shape == (2, 6, 8)
  np.testing.assert_array_equal(bias[0, 0] == 0, [1, 1, 1, 1, 1, 0, 1, 1])
  np.testing.assert_array_equal(bias[0, 5] == 0, [1, 1, 1, 0, 1, 1, 1, 1])
  assert (bias[1] == 0).all()
  assert bias.min() == np.float32(-1e4)


def _released_sparse(q, k, v, bounds, per_g):
  """HoloCine's attention_per_batch_with_shots: per shot, q attends [own K ; all summaries]."""
  kg = jnp.concatenate([k[a : a + per_g] for a, _ in bounds])
  vg = jnp.concatenate([v[a : a + per_g] for a, _ in bounds])
  outs = []
  for a, e in bounds:
    kk = jnp.concatenate([k[a:e], kg])
    vv = jnp.concatenate([v[a:e], vg])
    outs.append(reference.attention(q[None, a:e], kk[None], vv[None])[0])
  return jnp.concatenate(outs)


def test_sparse_reference_equals_released_per_shot_algorithm():
  lays = [ShotLayout((0, 2, 3, 6), 3), ShotLayout((0, 1, 6), 3)]
  b = layout.make_batch(lays, max_shots=4)
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 18, 2, 8))
  out = reference.sparse_shot_attention(q, k, v, b)
  for e, lay in enumerate(lays):
    tb = lay.token_bounds
    bounds = list(zip(tb, tb[1:], strict=False))
    want = _released_sparse(q[e], k[e], v[e], bounds, 3)
    np.testing.assert_allclose(out[e], want, atol=2e-6, rtol=0)
