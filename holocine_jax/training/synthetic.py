"""Built-in synthetic multi-shot dataset: procedurally drawn shots at latent resolution.

Each scene has 1..max_shots shots; every shot is one coloured shape moving in one direction over
a background, and its caption names exactly that ("a red disc moving left"), so the text
conditioning is learnable. Latents are drawn directly at latent resolution (no VAE) and text
embeddings come from the deterministic toy embedding of the prompt's words (`toy_text`, no
umT5), so training runs out of the box on CPU. Sample i is a pure function of (seed, i): any
host can read any index, in any order, and get the same record.
Legend: F latent frames, H/W latent height/width, C latent channels, N prompt tokens,
E text dim, S shots.
"""

import numpy as np

from holocine_jax import scene as scene_lib
from holocine_jax import toy_text

COLOURS = ("red", "green", "blue", "yellow", "white", "purple")
SHAPES = ("square", "disc", "bar")
MOTIONS = {
  "moving left": (0, -1),
  "moving right": (0, 1),
  "moving up": (-1, 0),
  "moving down": (1, 0),
  "standing still": (0, 0),
}
BACKGROUNDS = ("dark", "grey", "pale")


def _shape_mask(name: str, dy_HxW, dx_HxW) -> np.ndarray:
  if name == "square":
    return (np.abs(dy_HxW) <= 1.5) & (np.abs(dx_HxW) <= 1.5)
  if name == "disc":
    return dy_HxW**2 + dx_HxW**2 <= 2.5**2
  return (np.abs(dy_HxW) <= 0.5) & (np.abs(dx_HxW) <= 3)


def background_vector(background: str, channels: int) -> np.ndarray:
  """[C] latent of a scene's background."""
  return 0.3 * toy_text.word_vector(background, channels)


def shot_masks(shape: str, motion: str, cy, cx, frames: int, height: int, width: int):
  """bool [frames, ..., H, W]: where `shape` covers each frame as it moves on the torus from
  centre (cy, cx) (floats, or arrays that broadcast against [H, W] for many centres at once)."""
  vy, vx = MOTIONS[motion]
  y_H, x_W = np.arange(height)[:, None], np.arange(width)[None, :]
  masks = []
  for t in range(frames):
    dy = (y_H - cy - vy * t + height / 2) % height - height / 2
    dx = (x_W - cx - vx * t + width / 2) % width - width / 2
    masks.append(_shape_mask(shape, dy, dx))
  return np.stack(masks)


def _draw_shot(rng, colour, shape, motion, bg_C, frames: int, height: int, width: int):
  """[frames, H, W, C] latents of one shape moving on a torus over a constant background."""
  colour_C = toy_text.word_vector(colour, bg_C.shape[0])
  cy, cx = rng.uniform(0, height), rng.uniform(0, width)
  mask_FxHxW = shot_masks(shape, motion, cy, cx, frames, height, width)
  return bg_C + mask_FxHxW[..., None] * colour_C


class SyntheticSource:
  """Random-access source of synthetic multi-shot records (a grain-compatible data source)."""

  def __init__(
    self,
    *,
    num_samples: int,
    frame_choices,
    height: int,
    width: int,
    channels: int,
    text_dim: int,
    max_shots: int,
    seed: int = 0,
  ):
    self.num_samples = num_samples
    self.frame_choices = tuple(scene_lib.snap_frames(f) for f in frame_choices)
    self.height, self.width, self.channels = height, width, channels
    self.text_dim, self.max_shots, self.seed = text_dim, max_shots, seed

  @classmethod
  def from_config(cls, data, model) -> "SyntheticSource":
    return cls(
      num_samples=data.num_samples,
      frame_choices=data.frame_choices,
      height=data.latent_height,
      width=data.latent_width,
      channels=model.in_channels,
      text_dim=model.text_dim,
      max_shots=data.max_shots,
      seed=data.seed,
    )

  def __len__(self) -> int:
    return self.num_samples

  def num_frames(self, index: int) -> int:
    """Video frames of sample `index` (cheap; the bucketing key without drawing the sample)."""
    rng = np.random.default_rng([self.seed, index])
    return self.frame_choices[rng.integers(len(self.frame_choices))]

  def latent_shape(self, index: int) -> tuple[int, int, int]:
    return (scene_lib.num_latent_frames(self.num_frames(index)), self.height, self.width)

  def _draw_cuts(self, rng) -> tuple[int, np.ndarray]:
    """(video frames, sorted latent cut frames): the first draws of a sample's generator."""
    num_frames = self.frame_choices[rng.integers(len(self.frame_choices))]
    latent = scene_lib.num_latent_frames(num_frames)
    num_shots = int(rng.integers(1, min(self.max_shots, latent) + 1))
    return num_frames, np.sort(rng.choice(np.arange(1, latent), num_shots - 1, replace=False))

  def latent_bounds(self, index: int) -> tuple[int, ...]:
    """Shot bounds of sample `index` in latent frames (cheap: no captions, no drawing)."""
    num_frames, cuts_latent = self._draw_cuts(np.random.default_rng([self.seed, index]))
    return (0, *map(int, cuts_latent), scene_lib.num_latent_frames(num_frames))

  def longest_shots(self) -> list[int]:
    """Every sample's longest shot in latent frames (cheap: no drawing)."""
    return [int(np.diff(self.latent_bounds(i)).max()) for i in range(self.num_samples)]

  def scene(self, index: int) -> tuple[scene_lib.Scene, list[tuple[str, str, str]], str]:
    """The Scene of sample `index`, its per-shot (colour, shape, motion) and background."""
    rng = np.random.default_rng([self.seed, index])
    num_frames, cuts_latent = self._draw_cuts(rng)
    shots = [
      (COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))], m)
      for m in rng.choice(list(MOTIONS), len(cuts_latent) + 1)
    ]
    bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    scene = scene_lib.Scene.create(
      f"Moving shapes on a {bg} background.",
      [f"a {c} {s} {m}" for c, s, m in shots],
      num_frames,
      [scene_lib.VAE_TIME_STRIDE * (int(c) - 1) + 1 for c in cuts_latent],
    )
    return scene, shots, bg

  def __getitem__(self, index: int) -> dict:
    scene, shots, bg = self.scene(index)
    rng = np.random.default_rng([self.seed, index, 1])
    bg_C = background_vector(bg, self.channels)
    bounds = scene.latent_bounds()
    latents = np.concatenate(
      [
        _draw_shot(rng, *shot, bg_C, b - a, self.height, self.width)
        for shot, a, b in zip(shots, bounds, bounds[1:], strict=False)
      ]
    )
    context_NxE, ranges = toy_text.toy_text_embedding(scene.prompt(), self.text_dim)
    return dict(
      latents=latents,
      context=context_NxE,
      latent_bounds=np.asarray(bounds, np.int32),
      text_ranges=ranges,
      prompt=scene.prompt(),
    )
