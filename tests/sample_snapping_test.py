"""Sampling says what it changed and reads past a bad byte: snapped frames / cuts are logged and
kept in the sidecar beside the used values; a line that is not UTF-8 is one bad line."""

import json

import numpy as np

from holocine_jax.sampling import job, requests

DEFAULTS = dict(guidance=[5.0, 4.0], height=64, width=64, steps=2, seed=0, negative_prompt="x")
LINE = dict(id="a", global_caption="Shapes.", shot_captions=["a disc", "a bar"], num_frames=18)


def test_a_line_that_is_not_utf8_is_one_bad_line_and_the_rest_run(tmp_path):
  path = tmp_path / "scenes.jsonl"
  good = [json.dumps(dict(LINE, id=i)).encode() for i in ("a", "b")]
  path.write_bytes(good[0] + b"\n" + b'{"id": "caf\xe9"}\n' + good[1] + b"\n")
  items = list(requests.read(str(path), DEFAULTS))
  assert [getattr(x, "id", None) for x in items] == ["a", None, "b"]
  assert str(items[1]) == "line 2: not valid UTF-8 (byte 0xe9 at column 12)"


def test_snapped_frames_and_cuts_are_logged_and_recorded(tmp_path):
  line = json.dumps(dict(LINE, cut_frames=[7]))
  (item,) = requests.read_lines([line], DEFAULTS)
  logs = []

  def generate(batch):
    return [(np.zeros((r.scene.num_frames, 64, 64, 3), np.uint8), {}) for r in batch]

  report = job.run([item], lambda: generate, str(tmp_path), setup={}, log=logs.append)
  assert report.done == ["a"]
  assert any("num_frames 18 snapped to 17, cut_frames [7] snapped to [9]" in x for x in logs), logs
  sidecar = json.loads((tmp_path / "a.json").read_text())
  assert sidecar["snapped"] == dict(num_frames=[18, 17], cut_frames=[[7], [9]])
  assert sidecar["request"]["num_frames"] == 17
