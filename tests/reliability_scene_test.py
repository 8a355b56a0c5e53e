"""Issue 21 item 4: 4t+1 snapping is reported (the Scene keeps requested and used values) and
errors quote the values the caller gave, not snapped ones."""

import pytest

from holocine_jax.scene import Scene, SceneError


def test_snapped_frames_and_cuts_are_kept_and_reported():
  scene = Scene.create("g", ["a", "b", "c"], 18, [2, 7])
  assert (scene.num_frames, scene.cut_frames) == (17, (1, 9))
  assert (scene.requested_frames, scene.requested_cuts) == (18, (2, 7))
  assert scene.snapped() == {"num_frames": [18, 17], "cut_frames": [[2, 7], [1, 9]]}
  assert scene.snap_note().startswith("num_frames 18 snapped to 17, cut_frames [2, 7] snapped")


def test_nothing_snapped_says_nothing():
  scene = Scene.create("g", ["a", "b"], 17, [9])
  assert scene.snapped() == {} and scene.snap_note() is None
  assert Scene.create("g", ["a", "b"], 17).snap_note() is None  # HoloCine's default cuts
  assert scene == Scene("g", ("a", "b"), 17, (9,))  # requested values are not identity


@pytest.mark.parametrize(
  ("frames", "cuts", "shots", "match"),
  [
    (18, [9, 10], 3, r"cut frames \[9, 10\] \(snapped to \[9, 9\]\)"),
    (18, [16], 2, r"cut frame 16 \(snapped to 17\) is outside .* num_frames 18 \(snapped to 17\)"),
    (17, None, 5, r"5 shots do not fit in 17 frames: .* give cut_frames"),
  ],
)
def test_errors_quote_requested_values(frames, cuts, shots, match):
  with pytest.raises(SceneError, match=match):
    Scene.create("g", ["x"] * shots, frames, cuts)
