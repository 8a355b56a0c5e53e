"""Scene requests of a sampling job: one JSON object per line, validated with line numbers.

A line is either structured ({"id", "global_caption", "shot_captions", "num_frames",
"cut_frames"?}) or raw ({"id", "prompt", "num_frames", "cut_frames"?}), plus optional "seed",
"height", "width", "steps", "guidance" (one number or [high, low]) and "negative_prompt".
Types are strict (`json_fields`: a string is never a list, a boolean is not a number, a fraction
is not an integer, null is not a string) and every limit that generation would hit (`Limits`:
shots, prompt tokens, RoPE positions, shot length) is checked when the line is read, so a bad
line is reported on its own and never reaches (or fails) a batch.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Iterator

from holocine_jax import json_fields
from holocine_jax.scene import Scene, SceneError

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits: larger seeds would alias smaller ones


class RequestError(ValueError):
  """A request line that cannot be sampled; the message starts with its line number."""


def _guidance(field: str, value) -> tuple[float, float]:
  if isinstance(value, list):
    if len(value) != 2:
      raise ValueError(f"{field!r} must be a number or [high, low], got {len(value)} values")
    return json_fields.number(f"{field}[0]", value[0]), json_fields.number(f"{field}[1]", value[1])
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return (json_fields.number(field, value),) * 2
  raise ValueError(f"{field!r} must be a number or [high, low], got {json_fields.json_type(value)}")


def _size(field: str, value) -> int:
  value = json_fields.integer(field, value, lo=1)
  if value % 16:
    raise ValueError(f"{field!r} must be a positive multiple of 16, got {value}")
  return value


def _cuts(field: str, value) -> list[int] | None:
  if value is None:
    return None
  frame = lambda f, v: json_fields.integer(f, v, lo=1)
  return json_fields.items(field, value, frame, "a list of frame numbers")


# Fields a config gives defaults for: field -> validator(field, value) -> value.
DEFAULTABLE = dict(
  seed=lambda f, v: json_fields.integer(f, v, 0, MAX_SEED),
  height=_size,
  width=_size,
  steps=lambda f, v: json_fields.integer(f, v, lo=1),
  guidance=_guidance,
  negative_prompt=json_fields.string,
)
_KNOWN = {"id", "global_caption", "shot_captions", "prompt", "num_frames", "cut_frames"}
_KNOWN |= set(DEFAULTABLE)


def check_defaults(defaults: dict, keys: dict[str, str]) -> None:
  """Raises ValueError naming the config key (`keys[field]`) of a default no line could take."""
  for field, validate in DEFAULTABLE.items():
    try:
      validate(field, defaults[field])
    except ValueError as e:
      raise ValueError(f"config {keys[field]}: {e}") from None


@dataclasses.dataclass(frozen=True)
class Limits:
  """What generation can take, checked per line when it is read."""

  max_shots: int  # sample.max_shots
  max_positions: int  # model.rope_max_positions: post-patch frames, height and width
  patch: tuple[int, int, int]  # model.patch_size
  space_stride: int  # pixels per latent (VAE)
  max_shot_frames: int | None = None  # sample.max_shot_frames (latent frames); None: unbounded
  check_text: Callable[[Scene, str], object] | None = None  # raises when prompts do not fit

  def check(self, scene: Scene, height: int, width: int, negative_prompt: str) -> None:
    """Raises ValueError naming the limit the scene exceeds."""
    if scene.num_shots > self.max_shots:
      raise ValueError(
        f"the scene has {scene.num_shots} shots but at most {self.max_shots} are allowed "
        "(sample.max_shots)"
      )
    grid = dict(
      num_frames=(scene.num_latent_frames // self.patch[0], "latent frames"),
      height=(height // self.space_stride // self.patch[1], "latent rows"),
      width=(width // self.space_stride // self.patch[2], "latent columns"),
    )
    for field, (n, what) in grid.items():
      if n > self.max_positions:
        raise ValueError(
          f"{field!r} gives {n} {what} (after patching) but RoPE has {self.max_positions} "
          "positions (model.rope_max_positions)"
        )
    bounds = scene.latent_bounds()
    longest = max(b - a for a, b in zip(bounds, bounds[1:], strict=False))
    if self.max_shot_frames is not None and longest > self.max_shot_frames:
      raise ValueError(
        f"a shot has {longest} latent frames but sample.max_shot_frames is "
        f"{self.max_shot_frames}; cut the scene into shorter shots"
      )
    if self.check_text is not None:
      self.check_text(scene, negative_prompt)


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


def _scene(obj: dict) -> Scene:
  num_frames = json_fields.integer("num_frames", obj["num_frames"], lo=1)
  cuts = _cuts("cut_frames", obj.get("cut_frames"))
  if "prompt" in obj:
    return Scene.from_prompt(json_fields.string("prompt", obj["prompt"]), num_frames, cuts)
  return Scene.create(
    json_fields.string("global_caption", obj["global_caption"]),
    json_fields.strings("shot_captions", obj["shot_captions"]),
    num_frames,
    cuts,
  )


def parse(obj, line: int, defaults: dict, limits: Limits | None = None) -> SceneRequest:
  """One decoded JSON line -> SceneRequest; raises RequestError naming the line and problem."""
  fail = lambda msg: RequestError(f"line {line}: {msg}")
  if not isinstance(obj, dict):
    raise fail(f"expected a JSON object, got {json_fields.json_type(obj)}")
  unknown = sorted(set(obj) - _KNOWN)
  if unknown:
    raise fail(f"unknown fields {unknown}; known: {sorted(_KNOWN)}")
  rid = obj.get("id")
  if not isinstance(rid, str) or not _ID_RE.match(rid):
    raise fail(f"'id' must be a file-name-safe string (letters, digits, ._-), got {rid!r}")
  if "num_frames" not in obj:
    raise fail("'num_frames' is required")
  if "prompt" not in obj and ("global_caption" not in obj or "shot_captions" not in obj):
    raise fail("give either 'prompt' or both 'global_caption' and 'shot_captions'")
  try:
    scene = _scene(obj)
    values = {f: check(f, obj.get(f, defaults[f])) for f, check in DEFAULTABLE.items()}
    if limits is not None:
      limits.check(scene, values["height"], values["width"], values["negative_prompt"])
  except (SceneError, ValueError) as e:
    raise fail(str(e)) from e
  return SceneRequest(id=rid, scene=scene, line=line, **values)


def read(
  path, defaults: dict, limits: Limits | None = None
) -> Iterator[SceneRequest | RequestError]:
  """Requests of a JSONL file in order; a bad line (also one that is not UTF-8) yields its
  RequestError instead."""
  with open(path, "rb") as f:
    yield from read_lines(f, defaults, limits)


def read_lines(
  lines: Iterable[str | bytes], defaults: dict, limits: Limits | None = None
) -> Iterator[SceneRequest | RequestError]:
  """Requests of JSONL lines (text, or bytes decoded as UTF-8; numbered from 1) in order; see
  `read`."""
  seen: dict[str, int] = {}
  for line, text in enumerate(lines, start=1):
    if isinstance(text, bytes):
      try:
        text = text.decode("utf-8")
      except UnicodeDecodeError as e:
        at = f"byte 0x{text[e.start]:02x} at column {e.start + 1}"
        yield RequestError(f"line {line}: not valid UTF-8 ({at})")
        continue
    if not text.strip():
      continue
    try:
      request = parse(json.loads(text), line, defaults, limits)
    except json.JSONDecodeError as e:
      yield RequestError(f"line {line}: not valid JSON ({e.msg} at column {e.colno})")
      continue
    except (ValueError, TypeError) as e:  # RequestError, or a text check's own error
      yield e if isinstance(e, RequestError) else RequestError(f"line {line}: {e}")
      continue
    if request.id in seen:
      yield RequestError(f"line {line}: id {request.id!r} already used on line {seen[request.id]}")
      continue
    seen[request.id] = line
    yield request
