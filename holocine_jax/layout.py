"""Shot structure over the DiT token sequence, and the text windows of each shot.

Pure numpy on the host: a `ShotLayout` (one scene on one latent grid) and `TextWindows` (token
ranges of the captions) become a `ShotBatch`, a pytree of fixed-shape arrays that the masks and
kernels read. Elements of a batch may have different cuts and shot counts at the same shapes:
shots are padded to `max_shots`, so a new set of cuts never changes an array shape. Clips of
different lengths share a batch when padded to `num_frames` (training shape buckets): tokens past
a clip's last shot have shot id PAD_SHOT_ID and no real token may attend to them.

Legend: B batch, L video tokens, N shots (padded), G summary slots = N * P, P tokens per latent
frame, T text tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import struct

from holocine_jax.scene import Scene, SceneError

WINDOW_BLOCK_BIAS = -1e4  # additive logit bias HoloCine puts on text outside a shot's window
PAD_SHOT_ID = -2  # padding tokens past a layout's last shot: no shot (attention's INVALID_ID)
SHOT_BOUND_MULTIPLE = 4  # latent frames: few distinct shot bounds (compiles), little waste


class LayoutError(ValueError):
  """A layout, latent grid or text window that does not fit the model input."""


@dataclasses.dataclass(frozen=True)
class LatentGrid:
  """Latent video shape [frames, height, width] and the DiT patch size."""

  frames: int
  height: int
  width: int
  patch: tuple[int, int, int] = (1, 2, 2)

  def __post_init__(self):
    pt, ph, pw = self.patch
    if pt != 1:
      raise LayoutError(f"shot layouts need a temporal patch of 1, got patch {self.patch}")
    if self.height % ph or self.width % pw:
      raise LayoutError(
        f"latent size {self.height}x{self.width} is not divisible by the patch {ph}x{pw}"
      )

  @property
  def tokens_per_frame(self) -> int:
    return (self.height // self.patch[1]) * (self.width // self.patch[2])

  @property
  def num_tokens(self) -> int:
    return self.frames * self.tokens_per_frame


@dataclasses.dataclass(frozen=True)
class ShotLayout:
  """One scene's shots as latent-frame bounds on a token grid of `tokens_per_frame` per frame."""

  latent_bounds: tuple[int, ...]
  tokens_per_frame: int

  def __post_init__(self):
    b = tuple(int(x) for x in self.latent_bounds)
    object.__setattr__(self, "latent_bounds", b)
    if len(b) < 2 or b[0] != 0:
      raise LayoutError(f"latent bounds must start at 0 and name >= 1 shot, got {list(b)}")
    if any(y <= x for x, y in zip(b, b[1:], strict=False)):
      raise LayoutError(f"every shot needs >= 1 latent frame, got bounds {list(b)}")
    if self.tokens_per_frame < 1:
      raise LayoutError(f"tokens_per_frame must be >= 1, got {self.tokens_per_frame}")

  @classmethod
  def from_scene(cls, scene: Scene, grid: LatentGrid) -> ShotLayout:
    if scene.num_latent_frames != grid.frames:
      raise LayoutError(
        f"scene has {scene.num_frames} frames = {scene.num_latent_frames} latent frames, but "
        f"the latent grid has {grid.frames}"
      )
    return cls(scene.latent_bounds(), grid.tokens_per_frame)

  @classmethod
  def single_shot(cls, grid: LatentGrid) -> ShotLayout:
    return cls((0, grid.frames), grid.tokens_per_frame)

  @property
  def num_shots(self) -> int:
    return len(self.latent_bounds) - 1

  @property
  def num_tokens(self) -> int:
    return self.latent_bounds[-1] * self.tokens_per_frame

  @property
  def token_bounds(self) -> tuple[int, ...]:
    return tuple(b * self.tokens_per_frame for b in self.latent_bounds)

  def latent_frames_per_shot(self) -> tuple[int, ...]:
    b = self.latent_bounds
    return tuple(y - x for x, y in zip(b, b[1:], strict=False))

  def shot_ids(self) -> np.ndarray:
    """[L] shot index of every video token."""
    return np.repeat(np.arange(self.num_shots, dtype=np.int32), np.diff(self.token_bounds))

  def summary_tokens(self) -> np.ndarray:
    """[N*P] token indices of every shot's first latent frame, shot by shot."""
    p = self.tokens_per_frame
    starts = np.asarray(self.token_bounds[:-1], np.int32)
    return (starts[:, None] + np.arange(p, dtype=np.int32)[None]).reshape(-1)


@dataclasses.dataclass(frozen=True)
class TextWindows:
  """Token ranges [start, end) of the global caption and of each shot caption.

  These are the ranges HoloCine's prompter reports. Its mask then allows [start, end]
  INCLUSIVE (one token past each range) plus every position after the last range (padding);
  `allow_table` reproduces that.
  """

  global_range: tuple[int, int]
  shot_ranges: tuple[tuple[int, int], ...]

  def __post_init__(self):
    object.__setattr__(self, "global_range", tuple(int(x) for x in self.global_range))
    object.__setattr__(
      self, "shot_ranges", tuple(tuple(int(x) for x in r) for r in self.shot_ranges)
    )
    for name, (a, b) in [("global", self.global_range)] + [
      (f"shot {i}", r) for i, r in enumerate(self.shot_ranges)
    ]:
      if not 0 <= a < b:
        raise LayoutError(f"text window {name} must be a non-empty range [start, end), got {a, b}")

  @classmethod
  def from_ranges(cls, ranges) -> TextWindows:
    """From a [S+1, 2] array of ranges: row 0 the global caption's, row i+1 shot i's."""
    r = np.asarray(ranges)
    if r.ndim != 2 or r.shape[0] < 2 or r.shape[1] != 2:
      raise LayoutError(f"text ranges must be [S+1, 2] with S >= 1 shots, got shape {r.shape}")
    return cls(tuple(r[0]), tuple(tuple(x) for x in r[1:]))

  @property
  def num_shots(self) -> int:
    return len(self.shot_ranges)

  def allow_table(self, text_len: int) -> np.ndarray:
    """[N, T] text positions each shot's video tokens may attend to."""
    ends = [self.global_range[1]] + [e for _, e in self.shot_ranges]
    if max(ends) > text_len:
      raise LayoutError(f"text windows end at token {max(ends)} beyond text length {text_len}")
    pos = np.arange(text_len)
    g0, g1 = self.global_range
    base = ((pos >= g0) & (pos <= g1)) | (pos > max(ends))
    return np.stack([base | ((pos >= s0) & (pos <= s1)) for s0, s1 in self.shot_ranges])


@struct.dataclass
class ShotBatch:
  """Fixed-shape arrays describing a batch of layouts (and optionally text windows).

  `text_allow_BxNxT` is None when no element uses window cross-attention; an element without
  windows (e.g. the negative prompt) has all-True rows. The static `max_shot_frames` bounds every
  shot's length: sparse kernels size their loops by it, so cuts may change without recompiling.
  """

  shot_id_BxL: jnp.ndarray
  shot_bounds_BxNx2: jnp.ndarray
  summary_idx_BxG: jnp.ndarray
  summary_valid_BxG: jnp.ndarray
  text_allow_BxNxT: jnp.ndarray | None = None
  tokens_per_frame: int = struct.field(pytree_node=False, default=1)
  max_shot_frames: int = struct.field(pytree_node=False, default=1)

  @property
  def max_shots(self) -> int:
    return self.shot_bounds_BxNx2.shape[1]

  @property
  def max_shot_tokens(self) -> int:
    return min(self.max_shot_frames * self.tokens_per_frame, self.shot_id_BxL.shape[1])


def dense_batch(batch: int, num_tokens: int, real_BxL=None) -> ShotBatch:
  """One shot over all tokens and no summary slots: full attention expressed as a ShotBatch.
  With `real_BxL` (bool, padding at the end) the shot spans each row's real tokens and the rest
  are padding (PAD_SHOT_ID), which no real token sees."""
  if real_BxL is None:
    real_BxL = jnp.ones((batch, num_tokens), bool)
  real_Bx1 = real_BxL.sum(axis=1, keepdims=True, dtype=jnp.int32)
  return ShotBatch(
    shot_id_BxL=jnp.where(real_BxL, 0, PAD_SHOT_ID).astype(jnp.int32),
    shot_bounds_BxNx2=jnp.stack([jnp.zeros_like(real_Bx1), real_Bx1], axis=-1),
    summary_idx_BxG=jnp.zeros((batch, 0), jnp.int32),
    summary_valid_BxG=jnp.zeros((batch, 0), bool),
    tokens_per_frame=num_tokens,
    max_shot_frames=1,
  )


def round_shot_bound(longest_shot: int, clip_frames: int) -> int:
  """Static shot-length bound (latent frames) for shots of at most `longest_shot` latent frames:
  rounded up to a multiple of SHOT_BOUND_MULTIPLE, capped at the clip's `clip_frames`."""
  m = SHOT_BOUND_MULTIPLE
  return min(-(-longest_shot // m) * m, clip_frames)


def make_batch(
  layouts: Sequence[ShotLayout],
  windows: Sequence[TextWindows | None] | None = None,
  *,
  max_shots: int | None = None,
  max_shot_frames: int | None = None,
  text_len: int = 512,
  num_frames: int | None = None,
) -> ShotBatch:
  """Stacks layouts (and text windows) padded to `max_shots` into a `ShotBatch`.

  `max_shot_frames` (default: the whole clip) is the static bound on shot length that sparse
  attention sizes its work by; keep it fixed across batches to avoid recompiling. `num_frames`
  pads every layout to that many latent frames (shape buckets): tokens past a layout's last shot
  get PAD_SHOT_ID and belong to no shot.
  """
  if not layouts:
    raise LayoutError("make_batch needs at least one layout")
  num_tokens = {lay.num_tokens for lay in layouts}
  per_frame = {lay.tokens_per_frame for lay in layouts}
  if (num_frames is None and len(num_tokens) != 1) or len(per_frame) != 1:
    raise LayoutError(
      f"all layouts in a batch need the same grid, got token counts {sorted(num_tokens)} and "
      f"tokens per frame {sorted(per_frame)}"
    )
  (p,) = per_frame
  num_l = max(num_tokens) if num_frames is None else num_frames * p
  if max(num_tokens) > num_l:
    raise LayoutError(
      f"a layout has {max(num_tokens) // p} latent frames but num_frames={num_frames}"
    )
  need = max(lay.num_shots for lay in layouts)
  n = need if max_shots is None else max_shots
  if n < need:
    raise LayoutError(f"max_shots={max_shots} but a layout has {need} shots")
  bounds = np.full((len(layouts), n, 2), num_l, np.int32)
  summary_idx = np.zeros((len(layouts), n * p), np.int32)
  summary_valid = np.zeros((len(layouts), n * p), bool)
  shot_id = np.full((len(layouts), num_l), PAD_SHOT_ID, np.int32)
  for b, lay in enumerate(layouts):
    shot_id[b, : lay.num_tokens] = lay.shot_ids()
    tb = np.asarray(lay.token_bounds, np.int32)
    bounds[b, : lay.num_shots] = np.stack([tb[:-1], tb[1:]], -1)
    summary_idx[b, : lay.num_shots * p] = lay.summary_tokens()
    summary_valid[b, : lay.num_shots * p] = True
  frames = num_l // p
  cap = frames if max_shot_frames is None else max_shot_frames
  longest = max(max(lay.latent_frames_per_shot()) for lay in layouts)
  if longest > cap:
    raise LayoutError(
      f"a shot has {longest} latent frames but max_shot_frames={cap}; raise the bound"
    )
  allow = None
  if windows is not None:
    if len(windows) != len(layouts):
      raise LayoutError(f"{len(windows)} text windows for {len(layouts)} layouts")
    allow = np.ones((len(layouts), n, text_len), bool)
    for b, (lay, win) in enumerate(zip(layouts, windows, strict=True)):
      if win is None:
        continue
      if win.num_shots != lay.num_shots:
        raise SceneError(
          f"batch element {b}: the prompt has {win.num_shots} shot captions but the video "
          f"layout has {lay.num_shots} shots"
        )
      allow[b, : lay.num_shots] = win.allow_table(text_len)
  return ShotBatch(
    shot_id_BxL=jnp.asarray(shot_id),
    shot_bounds_BxNx2=jnp.asarray(bounds),
    summary_idx_BxG=jnp.asarray(summary_idx),
    summary_valid_BxG=jnp.asarray(summary_valid),
    text_allow_BxNxT=None if allow is None else jnp.asarray(allow),
    tokens_per_frame=p,
    max_shot_frames=cap,
  )
