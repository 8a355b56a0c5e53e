"""Scene: snapping, default cuts, latent mapping, prompt format and every bad input."""

import pytest

from holocine_jax import scene
from holocine_jax.scene import Scene, SceneError

SHOTS5 = ["shot a", "shot b", "shot c", "shot d", "shot e"]


def test_snap_frames_matches_holocine():
  # Python's round-half-to-even, as HoloCine's enforce_4t_plus_1: 3 -> 1 but 7 -> 9.
  assert [scene.snap_frames(n) for n in (1, 2, 3, 4, 5, 7, 240, 241, 242, 243, 244)] == [
    1,
    1,
    1,
    5,
    5,
    9,
    241,
    241,
    241,
    241,
    245,
  ]


def test_default_241_frames_5_shots():
  s = Scene.create("A ballroom.", SHOTS5, 241)
  assert s.cut_frames == (49, 97, 145, 193)
  assert s.num_latent_frames == 61
  assert s.latent_bounds() == (0, 13, 25, 37, 49, 61)


def test_frame_to_latent():
  assert [scene.frame_to_latent(f) for f in (1, 4, 5, 8, 9, 49, 240)] == [1, 1, 2, 2, 3, 13, 60]


def test_user_cuts_are_snapped():
  s = Scene.create("g", ["a", "b", "c"], 100, cut_frames=[30, 70])
  assert s.num_frames == 101 and s.cut_frames == (29, 69)


def test_prompt_round_trip():
  s = Scene.create("  A   studio.  ", ["Medium  shot.", "Close-up."], 81, [41])
  p = s.prompt()
  assert p == (
    "[global caption] A studio. This scene contains 2 shots. "
    "[per shot caption] Medium shot. [shot cut] Close-up."
  )
  assert Scene.from_prompt(p, 81, [41]) == s
  assert Scene.from_prompt(p, 81).cut_frames == (41,)


def test_global_caption_with_count_sentence_is_normalised():
  s = Scene.create("A studio. This scene contains 2 shots.", ["a", "b"], 9)
  assert s.global_caption == "A studio."
  assert s.prompt().count("This scene contains") == 1


@pytest.mark.parametrize(
  ("kwargs", "match"),
  [
    (dict(global_caption=" ", shot_captions=["a"], num_frames=5), "global caption is empty"),
    (dict(global_caption="g", shot_captions=["a", " "], num_frames=9), "shot caption 1 is empty"),
    (dict(global_caption="g", shot_captions=[], num_frames=9), "at least one shot"),
    (
      dict(global_caption="g", shot_captions=["a", "b"], num_frames=9, cut_frames=[]),
      "2 shots need 1 cut",
    ),
    (
      dict(global_caption="g", shot_captions=["a", "b", "c"], num_frames=41, cut_frames=[21, 9]),
      "strictly increasing",
    ),
    (dict(global_caption="g", shot_captions=["a", "b"], num_frames=41, cut_frames=[41]), "outside"),
    (
      dict(global_caption="g", shot_captions=["a", "b", "c"], num_frames=41, cut_frames=[9, 13]),
      None,
    ),
    (dict(global_caption="g", shot_captions=["a", "b"], num_frames=0), "num_frames must be >= 1"),
    (dict(global_caption="g [shot cut] x", shot_captions=["a"], num_frames=5), "reserved marker"),
    (
      dict(global_caption="g This scene contains 3 shots.", shot_captions=["a"], num_frames=5),
      "contains 3 shots but 1",
    ),
  ],
)
def test_bad_scene(kwargs, match):
  if match is None:
    Scene.create(**kwargs)
    return
  with pytest.raises(SceneError, match=match):
    Scene.create(**kwargs)


def test_cuts_mapping_to_same_latent_frame():
  # Frames 6 and 8 both fall in latent frame 2: the middle shot would be empty.
  with pytest.raises(SceneError, match="shot 1 maps to zero latent frames"):
    Scene("g", ("a", "b", "c"), 41, (6, 8))


def test_too_many_default_shots_for_frames():
  with pytest.raises(SceneError, match="zero latent frames|strictly increasing"):
    Scene.create("g", ["a"] * 6, 9)


def test_direct_construction_validates_4t_plus_1():
  with pytest.raises(SceneError, match="4t\\+1"):
    Scene("g", ("a",), 8, ())


@pytest.mark.parametrize(
  ("prompt", "match"),
  [
    ("no markers at all", "\\[global caption\\]"),
    ("[global caption] g only", "\\[per shot caption\\]"),
    ("[per shot caption] a [global caption] g", "must come after|must start"),
    ("x [global caption] g [per shot caption] a", "must start"),
    ("[global caption] g [per shot caption] a [shot cut]  ", "shot caption 1 is empty"),
    ("[global caption] g [per shot caption] a [per shot caption] b", "exactly once"),
  ],
)
def test_bad_prompt(prompt, match):
  with pytest.raises(SceneError, match=match):
    Scene.from_prompt(prompt, 9)
