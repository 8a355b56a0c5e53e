"""A manifest entry -> a clip ready to encode (frames + Scene), or a Skip naming why not.

The video is decoded at the target fps and size (`video_decode`), trimmed to the longest allowed
frame count that fits (every 4t+1 count, or `ClipSpec.lengths`), and its cuts are the given ones
(checked against detection when a detector is given: disagreement beyond `cut_tolerance` frames
keeps the clip with a warning, or drops it) or the detected ones, whose count must match the shot
captions. Given cuts that 4t+1 snapping moves are kept with a warning saying so. Skip reasons: see
REASONS.
Legend: T frames, H height, W width.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from holocine_jax import scene as scene_lib
from holocine_jax import video
from holocine_jax.data import cuts as cuts_lib
from holocine_jax.data import video_decode
from holocine_jax.data.manifest import Entry

REASONS = (
  "bad_line",  # the manifest line does not validate
  "unreadable",  # the video file cannot be opened
  "corrupt",  # FFmpeg cannot decode it, or it has no frames
  "too_short",  # fewer frames than the shortest allowed clip
  "cut_count",  # detected cuts do not match the shot captions
  "cut_mismatch",  # given cuts disagree with detection (with --drop_cut_mismatch)
  "bad_cuts",  # given cuts do not fit the clip (past its end, shots under one latent frame)
  "caption_too_long",  # the prompt does not fit the text encoder
  "nonfinite",  # the encoders gave NaN or Inf
)


# Pixels per DiT token side: the VAE's spatial stride times the (1, 2, 2) patch of every config.
SPACE_MULTIPLE = video.VAE_SPACE_STRIDE * 2


class Skip(Exception):  # noqa: N818 (a verdict, not a failure of the program)
  """A manifest line left out of the dataset: `reason` (one of REASONS) and a message."""

  def __init__(self, reason: str, message: str):
    if reason not in REASONS:
      raise ValueError(f"unknown skip reason {reason!r}")
    super().__init__(message)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """How videos become clips."""

  fps: float
  height: int
  width: int
  min_frames: int = 17  # the shortest clip kept, without `lengths`
  lengths: tuple[int, ...] = ()  # allowed frame counts (4t+1); () allows every 4t+1 count
  cut_tolerance: int = 4  # frames between a given cut and its detected one
  drop_cut_mismatch: bool = False

  def __post_init__(self):
    if not 0 < self.fps < math.inf:
      raise ValueError(f"fps (--fps) must be a positive frame rate, got {self.fps:g}")
    m = SPACE_MULTIPLE
    if self.height < m or self.width < m or self.height % m or self.width % m:
      fit = lambda n: max(m, n // m * m)
      raise ValueError(
        f"height x width (--height, --width) must be multiples of {m} (the VAE's 8x "
        f"downsampling times the DiT's 2x2 patch), got {self.height}x{self.width}; e.g. "
        f"{fit(self.height)}x{fit(self.width)}"
      )
    bad = [n for n in self.lengths if n != scene_lib.snap_frames(n) or n < 1]
    if bad:
      raise ValueError(f"clip lengths must be 4t+1 frame counts (1, 5, 9, ...), got {bad}")

  @property
  def max_frames(self) -> int | None:
    return max(self.lengths) if self.lengths else None

  def length(self, available: int) -> int | None:
    """The clip length for `available` decoded frames, None when too short."""
    if self.lengths:
      return max((n for n in self.lengths if n <= available), default=None)
    n = (available - 1) // scene_lib.VAE_TIME_STRIDE * scene_lib.VAE_TIME_STRIDE + 1
    return n if n >= self.min_frames else None


@dataclasses.dataclass(frozen=True)
class Clip:
  """A clip to encode: its manifest line, Scene, frames and any warning about its cuts."""

  line: int
  scene: scene_lib.Scene
  frames_TxHxWx3: np.ndarray
  warning: str | None = None


def _cuts(
  entry: Entry, frames, spec: ClipSpec, detect
) -> tuple[tuple[int, ...] | None, str | None]:
  """(cut frames, None for HoloCine's evenly spaced ones; a warning about them or None)."""
  given = entry.cuts(spec.fps)
  if detect is None:
    return given, None
  detected = detect(frames)
  if given is None:
    if len(detected) != len(entry.shot_captions) - 1:
      raise Skip(
        "cut_count",
        f"detected {len(detected)} cuts {detected} but {len(entry.shot_captions)} shot captions "
        f"need {len(entry.shot_captions) - 1}",
      )
    return tuple(detected), None
  why = cuts_lib.disagreement(given, detected, spec.cut_tolerance)
  if why and spec.drop_cut_mismatch:
    raise Skip("cut_mismatch", why)
  return given, why


def prepare(entry: Entry, spec: ClipSpec, detect: cuts_lib.DetectCuts | None) -> Clip:
  """Decodes, trims and cuts one entry; raises Skip."""
  try:
    frames = video_decode.decode(
      entry.video, fps=spec.fps, height=spec.height, width=spec.width, max_frames=spec.max_frames
    )
  except video_decode.VideoError as e:
    raise Skip(e.reason, str(e)) from None
  n = spec.length(len(frames))
  if n is None:
    need = min(spec.lengths) if spec.lengths else spec.min_frames
    raise Skip("too_short", f"{len(frames)} frames at {spec.fps:g} fps; need at least {need}")
  frames = frames[:n]
  cut_frames, warning = _cuts(entry, frames, spec, detect)
  try:
    scene = scene_lib.Scene.create(entry.global_caption, entry.shot_captions, n, cut_frames)
  except scene_lib.SceneError as e:
    raise Skip("bad_cuts", f"{e} (clip of {n} frames at {spec.fps:g} fps)") from None
  snapped = scene.snap_note() if entry.cuts(spec.fps) is not None else None
  if snapped and entry.cut_times is not None:
    snapped = f"cut_times {list(entry.cut_times)} at {spec.fps:g} fps: {snapped}"
  return Clip(entry.line, scene, frames, "; ".join(filter(None, (warning, snapped))) or None)
