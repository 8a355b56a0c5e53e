"""Scene requests of a sampling job: one JSON object per line, validated with line numbers.

A line is either structured ({"id", "global_caption", "shot_captions", "num_frames",
"cut_frames"?}) or raw ({"id", "prompt", "num_frames", "cut_frames"?}), plus optional "seed",
"height", "width", "steps", "guidance" (one number or [high, low]) and "negative_prompt".
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator

from holocine_jax.scene import Scene, SceneError

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_KNOWN = {
  "id",
  "global_caption",
  "shot_captions",
  "prompt",
  "num_frames",
  "cut_frames",
  "seed",
  "height",
  "width",
  "steps",
  "guidance",
  "negative_prompt",
}


class RequestError(ValueError):
  """A request line that cannot be sampled; the message starts with its line number."""


@dataclasses.dataclass(frozen=True)
class SceneRequest:
  """One scene to generate, with its defaults resolved."""

  id: str
  scene: Scene
  seed: int
  height: int
  width: int
  steps: int
  guidance: tuple[float, float]  # (high-noise expert, low-noise expert)
  negative_prompt: str
  line: int

  def shape_key(self) -> tuple:
    """Requests with equal keys can share one batched denoising call."""
    return (
      self.scene.num_frames,
      self.height,
      self.width,
      self.steps,
      self.guidance,
      self.negative_prompt,
    )

  def to_json(self) -> dict:
    s = self.scene
    return dict(
      id=self.id,
      global_caption=s.global_caption,
      shot_captions=list(s.shot_captions),
      num_frames=s.num_frames,
      cut_frames=list(s.cut_frames),
      prompt=s.prompt(),
      seed=self.seed,
      height=self.height,
      width=self.width,
      steps=self.steps,
      guidance=list(self.guidance),
      negative_prompt=self.negative_prompt,
    )


def parse(obj, line: int, defaults: dict) -> SceneRequest:
  """One decoded JSON line -> SceneRequest; raises RequestError naming the line and problem."""
  fail = lambda msg: RequestError(f"line {line}: {msg}")
  if not isinstance(obj, dict):
    raise fail(f"expected a JSON object, got {type(obj).__name__}")
  unknown = sorted(set(obj) - _KNOWN)
  if unknown:
    raise fail(f"unknown fields {unknown}; known: {sorted(_KNOWN)}")
  rid = obj.get("id")
  if not isinstance(rid, str) or not _ID_RE.match(rid):
    raise fail(f"'id' must be a file-name-safe string (letters, digits, ._-), got {rid!r}")
  if "num_frames" not in obj:
    raise fail("'num_frames' is required")
  try:
    if "prompt" in obj:
      scene = Scene.from_prompt(obj["prompt"], int(obj["num_frames"]), obj.get("cut_frames"))
    else:
      if "global_caption" not in obj or "shot_captions" not in obj:
        raise fail("give either 'prompt' or both 'global_caption' and 'shot_captions'")
      scene = Scene.create(
        obj["global_caption"], obj["shot_captions"], int(obj["num_frames"]), obj.get("cut_frames")
      )
  except SceneError as e:
    raise fail(str(e)) from e
  guidance = obj.get("guidance", defaults["guidance"])
  guidance = (guidance, guidance) if isinstance(guidance, (int, float)) else tuple(guidance)
  if len(guidance) != 2:
    raise fail(f"'guidance' must be a number or [high, low], got {obj['guidance']!r}")
  height, width = (
    int(obj.get("height", defaults["height"])),
    int(obj.get("width", defaults["width"])),
  )
  if height % 16 or width % 16 or height <= 0 or width <= 0:
    raise fail(f"height and width must be positive multiples of 16, got {height}x{width}")
  steps = int(obj.get("steps", defaults["steps"]))
  if steps < 1:
    raise fail(f"'steps' must be >= 1, got {steps}")
  return SceneRequest(
    id=rid,
    scene=scene,
    seed=int(obj.get("seed", defaults["seed"])),
    height=height,
    width=width,
    steps=steps,
    guidance=(float(guidance[0]), float(guidance[1])),
    negative_prompt=str(obj.get("negative_prompt", defaults["negative_prompt"])),
    line=line,
  )


def read(path, defaults: dict) -> Iterator[SceneRequest | RequestError]:
  """Requests of a JSONL file in order; a bad line yields its RequestError instead."""
  seen: dict[str, int] = {}
  with open(path) as f:
    for line, text in enumerate(f, start=1):
      if not text.strip():
        continue
      try:
        request = parse(json.loads(text), line, defaults)
      except json.JSONDecodeError as e:
        yield RequestError(f"line {line}: not valid JSON ({e.msg} at column {e.colno})")
        continue
      except (RequestError, ValueError, TypeError) as e:
        yield e if isinstance(e, RequestError) else RequestError(f"line {line}: {e}")
        continue
      if request.id in seen:
        yield RequestError(
          f"line {line}: id {request.id!r} already used on line {seen[request.id]}"
        )
        continue
      seen[request.id] = line
      yield request
