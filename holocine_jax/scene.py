"""A multi-shot scene: captions, frame count and shot cuts, as HoloCine defines them.

HoloCine's prompt string is
  "[global caption] G This scene contains N shots. [per shot caption] S1 [shot cut] S2 ... SN"
with N-1 cut frames; all frame counts are 4t+1 so that the causal VAE maps them to whole
latent frames. A `Scene` is always valid: construction raises `SceneError` naming the problem
in the caller's values. `Scene.create` snaps frame counts and cuts to 4t+1 and keeps what was
asked for: `snapped()` / `snap_note()` say what changed.
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
  # As the caller gave them to `create`, before 4t+1 snapping (None: used as given; cuts: also
  # None when HoloCine's evenly spaced defaults were used). Not part of equality.
  requested_frames: int | None = dataclasses.field(default=None, compare=False)
  requested_cuts: tuple[int, ...] | None = dataclasses.field(default=None, compare=False)

  def __post_init__(self):
    object.__setattr__(self, "shot_captions", tuple(self.shot_captions))
    object.__setattr__(self, "cut_frames", tuple(int(c) for c in self.cut_frames))
    if self.requested_cuts is not None:
      object.__setattr__(self, "requested_cuts", tuple(int(c) for c in self.requested_cuts))
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
    requested_cuts = None if cut_frames is None else tuple(int(c) for c in cut_frames)
    used_frames = snap_frames(num_frames)
    if requested_cuts is None:
      cuts = default_cuts(used_frames, len(shot_captions))
      if any(b <= a for a, b in zip(cuts, cuts[1:], strict=False)):
        raise SceneError(
          f"{len(shot_captions)} shots do not fit in {_snapped(num_frames, used_frames)} frames: "
          f"HoloCine's evenly spaced cuts {list(cuts)} (round(i*F/N) snapped to 4t+1) are not "
          f"strictly increasing; give cut_frames ({VAE_TIME_STRIDE} frames apart), or more frames"
        )
    else:
      cuts = tuple(snap_frames(c) for c in requested_cuts)
    return cls(global_caption, shot_captions, used_frames, cuts, int(num_frames), requested_cuts)

  @property
  def num_shots(self) -> int:
    return len(self.shot_captions)

  def snapped(self) -> dict[str, list]:
    """{field: [requested, used]} for each of num_frames / cut_frames that 4t+1 snapping
    changed (empty when nothing was changed): what a sidecar records beside the used values."""
    changed = {}
    if self.requested_frames is not None and self.requested_frames != self.num_frames:
      changed["num_frames"] = [self.requested_frames, self.num_frames]
    if self.requested_cuts is not None and self.requested_cuts != self.cut_frames:
      changed["cut_frames"] = [list(self.requested_cuts), list(self.cut_frames)]
    return changed

  def snap_note(self) -> str | None:
    """One line saying what 4t+1 snapping changed, for the caller to print; None if nothing."""
    changed = self.snapped()
    if not changed:
      return None
    parts = [f"{field} {req} snapped to {used}" for field, (req, used) in changed.items()]
    return f"{', '.join(parts)} (frame counts and cuts are 4t+1: the VAE's frame groups)"

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
  frames = _snapped(scene.requested_frames, f)
  if f < 1 or (f - 1) % VAE_TIME_STRIDE:
    raise SceneError(f"num_frames must be 4t+1 (1, 5, 9, ...), got {f}")
  cuts = scene.cut_frames
  given = cuts if scene.requested_cuts is None else scene.requested_cuts
  cuts_text = _snapped(list(given), list(cuts))
  if len(given) != scene.num_shots - 1:
    raise SceneError(
      f"{scene.num_shots} shots need {scene.num_shots - 1} cut frames, got {len(given)}: "
      f"{list(given)}"
    )
  for a, b in zip(given, given[1:], strict=False):
    if b <= a:
      raise SceneError(f"cut frames must be strictly increasing, got {list(given)}")
  for c, used in zip(given, cuts, strict=True):
    if c <= 0 or not 0 < used < f:
      raise SceneError(f"cut frame {_snapped(c, used)} is outside (0, {f}) for num_frames {frames}")
  for a, b in zip(cuts, cuts[1:], strict=False):
    if b <= a:
      raise SceneError(
        f"cut frames {cuts_text} fall on the same 4t+1 frame; cuts must be at least "
        f"{VAE_TIME_STRIDE} frames apart"
      )
  bounds = scene.latent_bounds()
  for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
    if b <= a:
      raise SceneError(
        f"shot {i} maps to zero latent frames (latent bounds {list(bounds)} from cuts "
        f"{cuts_text}); cuts must be at least {VAE_TIME_STRIDE} frames apart"
      )


def _snapped(requested, used) -> str:
  """`requested`, plus what snapping made of it when that differs: for error messages."""
  if requested is None or requested == used:
    return str(used)
  return f"{requested} (snapped to {used})"
