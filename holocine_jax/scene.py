"""A multi-shot scene: captions, frame count and shot cuts, as HoloCine defines them.

HoloCine's prompt string is
  "[global caption] G This scene contains N shots. [per shot caption] S1 [shot cut] S2 ... SN"
with N-1 cut frames; all frame counts are 4t+1 so that the causal VAE maps them to whole
latent frames. A `Scene` is always valid: construction raises `SceneError` naming the problem.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

GLOBAL_MARKER = "[global caption]"
SHOTS_MARKER = "[per shot caption]"
CUT_MARKER = "[shot cut]"
MARKERS = (GLOBAL_MARKER, SHOTS_MARKER, CUT_MARKER)
VAE_TIME_STRIDE = 4

_COUNT_RE = re.compile(r"\s*This scene contains (\d+) shots?\.\s*$")
_SPACE_RE = re.compile(r"\s+")


class SceneError(ValueError):
  """A scene (captions, frames or cuts) that HoloCine cannot generate."""


def snap_frames(n: int) -> int:
  """Nearest 4t+1 frame count, as HoloCine's `enforce_4t_plus_1` (Python rounding)."""
  return VAE_TIME_STRIDE * round((n - 1) / VAE_TIME_STRIDE) + 1


def frame_to_latent(f: int) -> int:
  """Latent frame holding video frame f >= 1 (frame 0 is latent 0 on its own)."""
  return (f - 1) // VAE_TIME_STRIDE + 1


def num_latent_frames(num_frames: int) -> int:
  return (num_frames - 1) // VAE_TIME_STRIDE + 1


def default_cuts(num_frames: int, num_shots: int) -> tuple[int, ...]:
  """HoloCine's evenly spaced cuts: round(i * F / N), snapped to 4t+1."""
  return tuple(snap_frames(round(i * num_frames / num_shots)) for i in range(1, num_shots))


def _clean(text: str) -> str:
  return _SPACE_RE.sub(" ", text).strip()


@dataclasses.dataclass(frozen=True)
class Scene:
  """A validated scene; `global_caption` never carries the "This scene contains" sentence."""

  global_caption: str
  shot_captions: tuple[str, ...]
  num_frames: int
  cut_frames: tuple[int, ...]

  def __post_init__(self):
    object.__setattr__(self, "shot_captions", tuple(self.shot_captions))
    object.__setattr__(self, "cut_frames", tuple(int(c) for c in self.cut_frames))
    _validate(self)

  @classmethod
  def create(
    cls,
    global_caption: str,
    shot_captions: Sequence[str],
    num_frames: int,
    cut_frames: Sequence[int] | None = None,
  ) -> Scene:
    """Builds a scene as HoloCine's structured input does: cleans captions, snaps frames to
    4t+1, and fills evenly spaced cuts when none are given."""
    shot_captions = tuple(_clean(s) for s in shot_captions)
    if not shot_captions:
      raise SceneError("a scene needs at least one shot caption, got none")
    global_caption = _strip_count(_clean(global_caption), len(shot_captions))
    if num_frames < 1:
      raise SceneError(f"num_frames must be >= 1, got {num_frames}")
    num_frames = snap_frames(num_frames)
    if cut_frames is None:
      cut_frames = default_cuts(num_frames, len(shot_captions))
    else:
      cut_frames = tuple(snap_frames(c) for c in cut_frames)
    return cls(global_caption, shot_captions, num_frames, tuple(cut_frames))

  @property
  def num_shots(self) -> int:
    return len(self.shot_captions)

  @property
  def num_latent_frames(self) -> int:
    return num_latent_frames(self.num_frames)

  def latent_bounds(self) -> tuple[int, ...]:
    """Latent-frame boundaries [0, c_1, ..., c_{N-1}, F']: shot i owns [b_i, b_{i+1})."""
    return (0, *(frame_to_latent(c) for c in self.cut_frames), self.num_latent_frames)

  def prompt(self) -> str:
    """HoloCine's prompt string for this scene."""
    shots = f" {CUT_MARKER} ".join(self.shot_captions)
    return (
      f"{GLOBAL_MARKER} {self.global_caption} This scene contains {self.num_shots} shots. "
      f"{SHOTS_MARKER} {shots}"
    )

  @classmethod
  def from_prompt(
    cls, prompt: str, num_frames: int, cut_frames: Sequence[int] | None = None
  ) -> Scene:
    """Parses a HoloCine prompt string (markers in order) back into a Scene."""
    prompt = _clean(prompt)
    for marker in (GLOBAL_MARKER, SHOTS_MARKER):
      if prompt.count(marker) != 1:
        raise SceneError(
          f"prompt must contain {marker!r} exactly once, found {prompt.count(marker)}: "
          f"{prompt[:80]!r}"
        )
    g, s = prompt.index(GLOBAL_MARKER), prompt.index(SHOTS_MARKER)
    if g != 0:
      raise SceneError(f"prompt must start with {GLOBAL_MARKER!r}, got {prompt[:40]!r}")
    if s < g:
      raise SceneError(f"{SHOTS_MARKER!r} must come after {GLOBAL_MARKER!r}")
    global_caption = prompt[len(GLOBAL_MARKER) : s]
    shots = prompt[s + len(SHOTS_MARKER) :].split(CUT_MARKER)
    return cls.create(global_caption, shots, num_frames, cut_frames)


def _strip_count(global_caption: str, num_shots: int) -> str:
  """Drops a trailing "This scene contains N shots." after checking N."""
  m = _COUNT_RE.search(global_caption)
  if m is None:
    return global_caption
  if int(m.group(1)) != num_shots:
    raise SceneError(
      f"global caption says the scene contains {m.group(1)} shots but {num_shots} shot "
      "captions were given"
    )
  return global_caption[: m.start()].strip()


def _validate(scene: Scene) -> None:
  if not scene.global_caption.strip():
    raise SceneError("global caption is empty")
  if not scene.shot_captions:
    raise SceneError("a scene needs at least one shot caption, got none")
  for i, caption in enumerate(scene.shot_captions):
    if not caption.strip():
      raise SceneError(f"shot caption {i} is empty")
  for name, text in [("global caption", scene.global_caption)] + [
    (f"shot caption {i}", c) for i, c in enumerate(scene.shot_captions)
  ]:
    for marker in MARKERS:
      if marker in text:
        raise SceneError(f"{name} contains the reserved marker {marker!r}: {text[:80]!r}")
  f = scene.num_frames
  if f < 1 or (f - 1) % VAE_TIME_STRIDE:
    raise SceneError(f"num_frames must be 4t+1 (1, 5, 9, ...), got {f}")
  cuts = scene.cut_frames
  if len(cuts) != scene.num_shots - 1:
    raise SceneError(
      f"{scene.num_shots} shots need {scene.num_shots - 1} cut frames, got {len(cuts)}: "
      f"{list(cuts)}"
    )
  for a, b in zip(cuts, cuts[1:], strict=False):
    if b <= a:
      raise SceneError(f"cut frames must be strictly increasing, got {list(cuts)}")
  for c in cuts:
    if not 0 < c < f:
      raise SceneError(f"cut frame {c} is outside (0, {f}) for a {f}-frame scene")
  bounds = scene.latent_bounds()
  for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
    if b <= a:
      raise SceneError(
        f"shot {i} maps to zero latent frames (latent bounds {list(bounds)} from cuts "
        f"{list(cuts)}); cuts must be at least {VAE_TIME_STRIDE} frames apart"
      )
