"""The preprocessing manifest: one scene per JSON line, validated strictly with line numbers.

  {"video": "clips/0001.mp4", "global_caption": "A rainy street at night.",
   "shot_captions": ["Wide shot ...", "Close-up ..."], "cut_frames": [81]}

`video` is relative to the manifest's folder (or absolute), an .mp4 / .webm / .mov / .mkv / .m4v
file. Cuts are optional: `cut_frames` are the first frames of shots 2..N counted in the clip as
it is stored (after resampling to the target fps), `cut_times` the same cuts in seconds from the
video's start; give at most one. Without them shot detection finds the cuts. Types are strict
(`json_fields`: a string is never a list, a fraction is not a frame number) and
every error names its line and field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from holocine_jax import json_fields
from holocine_jax.scene import VAE_TIME_STRIDE, Scene

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".m4v")
_FIELDS = ("video", "global_caption", "shot_captions", "cut_frames", "cut_times")


class ManifestError(ValueError):
  """A manifest line that cannot be preprocessed: "line N: <problem>"."""

  def __init__(self, line: int, problem: str):
    super().__init__(f"line {line}: {problem}")
    self.line, self.problem = line, problem


@dataclasses.dataclass(frozen=True)
class Line:
  """One non-blank manifest line: its 1-based number, text and a digest of the text; `error`
  names why the line could not be read (it is then reported and skipped like a bad line)."""

  number: int
  text: str
  error: str | None = None

  @property
  def digest(self) -> str:
    return hashlib.sha256(self.text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Entry:
  """A validated manifest line; `video` is an absolute path."""

  line: int
  video: str
  global_caption: str
  shot_captions: tuple[str, ...]
  cut_frames: tuple[int, ...] | None = None
  cut_times: tuple[float, ...] | None = None

  def prompt_scene(self) -> Scene:
    """A Scene with these captions and one latent frame per shot: for checks of the prompt."""
    return Scene.create(
      self.global_caption, self.shot_captions, VAE_TIME_STRIDE * len(self.shot_captions) + 1
    )

  def cuts(self, fps: float) -> tuple[int, ...] | None:
    """The given cuts as frames of the clip at `fps` (cut times rounded), or None."""
    if self.cut_times is not None:
      return tuple(round(t * fps) for t in self.cut_times)
    return self.cut_frames


def _decode(number: int, raw: bytes) -> Line:
  try:
    return Line(number, raw.decode("utf-8").strip())
  except UnicodeDecodeError as e:
    error = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
    return Line(number, raw.decode("utf-8", "backslashreplace").strip(), error)


def read_lines(path) -> list[Line]:
  """The non-blank lines of a UTF-8 manifest file, numbered from 1; a line that is not UTF-8
  comes with its `error` (the other lines still run)."""
  with open(path, "rb") as f:
    lines = [_decode(n, raw) for n, raw in enumerate(f, 1)]
  return [line for line in lines if line.text]


def _increasing(field: str, values: list) -> None:
  for i in range(1, len(values)):
    if values[i] <= values[i - 1]:
      raise ValueError(f"{field!r} must be strictly increasing, got {values}")


def _cut_list(field: str, value, item) -> tuple | None:
  if value is None:
    return None
  values = json_fields.items(field, value, item)
  _increasing(field, values)
  return tuple(values)


def _time(field: str, value) -> float:
  value = json_fields.number(field, value)
  if value <= 0:
    raise ValueError(f"{field!r} must be > 0 seconds, got {value}")
  return value


def _entry(obj: dict, number: int, base: str) -> Entry:
  video = json_fields.string("video", obj["video"])
  if not video.lower().endswith(VIDEO_EXTENSIONS):
    raise ValueError(f"'video' must be one of {', '.join(VIDEO_EXTENSIONS)}, got {video!r}")
  shots = json_fields.strings("shot_captions", obj["shot_captions"])
  frame = lambda f, v: json_fields.integer(f, v, lo=1)
  cut_frames = _cut_list("cut_frames", obj.get("cut_frames"), frame)
  cut_times = _cut_list("cut_times", obj.get("cut_times"), _time)
  for field, cuts in (("cut_frames", cut_frames), ("cut_times", cut_times)):
    if cuts is not None and len(cuts) != len(shots) - 1:
      raise ValueError(
        f"{field!r} has {len(cuts)} cuts but {len(shots)} shot captions need {len(shots) - 1}"
      )
  global_caption = json_fields.string("global_caption", obj["global_caption"])
  video = os.path.join(base, video)
  entry = Entry(number, video, global_caption, tuple(shots), cut_frames, cut_times)
  entry.prompt_scene()  # the captions alone: empty, reserved markers, "contains N shots." wrong
  return entry


def parse(line: Line, base: str) -> Entry:
  """A manifest line -> Entry (video relative to `base`); raises ManifestError naming the line
  and the field."""
  fail = lambda problem: ManifestError(line.number, problem)
  if line.error:
    raise fail(line.error)
  try:
    obj = json.loads(line.text)
  except json.JSONDecodeError as e:
    raise fail(f"not valid JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(obj, dict):
    raise fail(f"expected a JSON object, got {json_fields.json_type(obj)}")
  unknown = sorted(set(obj) - set(_FIELDS))
  if unknown:
    raise fail(f"unknown fields {unknown}; known: {list(_FIELDS)}")
  missing = [f for f in _FIELDS[:3] if f not in obj]
  if missing:
    raise fail(f"missing {', '.join(repr(f) for f in missing)}")
  if "cut_frames" in obj and "cut_times" in obj:
    raise fail("give 'cut_frames' or 'cut_times', not both")
  try:
    return _entry(obj, line.number, base)
  except ValueError as e:
    raise fail(str(e)) from None
