"""Scene lines: strict types with the field named, and every generation limit checked on read."""

import json

import pytest

from configs import tiny
from holocine_jax import sample
from holocine_jax.sampling import requests

DEFAULTS = dict(guidance=[5.0, 4.0], height=64, width=64, steps=2, seed=0, negative_prompt="x")
BASE = dict(id="a", global_caption="Shapes.", shot_captions=["a disc", "a bar"], num_frames=9)


def _parse(text, limits=None):
  (item,) = requests.read_lines([text], DEFAULTS, limits)
  return item


def _error(**fields):
  item = _parse(json.dumps({**BASE, **fields}))
  assert isinstance(item, requests.RequestError), item
  return str(item)


@pytest.mark.parametrize(
  ("fields", "message"),
  [
    (dict(shot_captions="Hi"), "'shot_captions' must be a list of strings, got a string"),
    (dict(shot_captions=["a", 3]), "'shot_captions[1]' must be a string, got 3"),
    (dict(guidance="12"), "'guidance' must be a number or [high, low], got a string"),
    (dict(guidance=[1.0, True]), "'guidance[1]' must be a finite number, got a boolean"),
    (dict(negative_prompt=None), "'negative_prompt' must be a string, got null"),
    (dict(global_caption=None), "'global_caption' must be a string, got null"),
    (dict(num_frames=17.9), "'num_frames' must be an integer, got 17.9"),
    (dict(num_frames=True), "'num_frames' must be an integer, got a boolean"),
    (dict(seed=1.9), "'seed' must be an integer, got 1.9"),
    (dict(seed=2**32), "'seed' must be in [0, 4294967295], got 4294967296"),
    (dict(seed=-1), "'seed' must be in [0, 4294967295], got -1"),
    (dict(steps=0), "'steps' must be >= 1, got 0"),
    (dict(height=72), "'height' must be a positive multiple of 16, got 72"),
    (dict(cut_frames=["5"]), "'cut_frames[0]' must be an integer, got a string"),
    (dict(cut_frames=5), "'cut_frames' must be a list of frame numbers, got 5"),
  ],
)
def test_lenient_values_are_errors_naming_the_field(fields, message):
  assert _error(**fields) == f"line 1: {message}"


def test_nan_guidance_is_refused_on_read():
  text = json.dumps(BASE)[:-1] + ', "guidance": NaN}'
  assert str(_parse(text)) == "line 1: 'guidance' must be a finite number, got nan"


def test_whole_numbers_and_defaults_resolve():
  request = _parse(json.dumps({**BASE, "num_frames": 17.0, "guidance": 3, "cut_frames": None}))
  assert request.scene.num_frames == 17 and request.guidance == (3.0, 3.0)
  assert (request.seed, request.steps, request.negative_prompt) == (0, 2, "x")
  assert _parse(json.dumps(BASE)).guidance == (5.0, 4.0)


@pytest.mark.parametrize(
  ("fields", "message"),
  [
    (
      dict(shot_captions=["a", "b", "c", "d"], num_frames=17),
      "the scene has 4 shots but at most 3 are allowed (sample.max_shots)",
    ),
    (dict(global_caption="many words " * 20), "prompt has 53 toy tokens but text_len is 32"),
    (dict(negative_prompt="blur " * 40), "prompt has 41 toy tokens but text_len is 32"),
    (
      dict(num_frames=4097),
      "'num_frames' gives 1025 latent frames (after patching) but RoPE has 1024 positions "
      "(model.rope_max_positions)",
    ),
    (
      dict(width=16 * 2049),
      "'width' gives 2049 latent columns (after patching) but RoPE has 1024 positions",
    ),
  ],
)
def test_generation_limits_are_checked_on_read(fields, message):
  limits = sample.limits(tiny.get_config())
  item = _parse(json.dumps({**BASE, **fields}), limits)
  assert isinstance(item, requests.RequestError) and message in str(item), item


def test_fixed_shot_bound_is_checked_on_read():
  config = tiny.get_config()
  config.sample.max_shot_frames = 2
  item = _parse(json.dumps({**BASE, "shot_captions": ["a"]}), sample.limits(config))
  assert "a shot has 3 latent frames but sample.max_shot_frames is 2" in str(item)


def test_bad_config_default_names_the_config_key():
  with pytest.raises(ValueError, match=r"config sampler.num_steps: 'steps' must be >= 1, got 0"):
    requests.check_defaults({**DEFAULTS, "steps": 0}, dict(steps="sampler.num_steps"))
