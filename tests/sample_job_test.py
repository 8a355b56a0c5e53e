"""The sampling job: mp4s with the requested frames, bad lines skipped, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from holocine_jax import sample
from holocine_jax.sampling import job, video_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENES = [
  dict(
    id="one",
    global_caption="Moving shapes on a dark background.",
    shot_captions=["a red disc moving left", "a blue square moving up"],
    num_frames=9,
    seed=1,
  ),
  dict(
    id="two",
    prompt="[global caption] Shapes. This scene contains 2 shots. [per shot caption] "
    "a green bar moving down [shot cut] a white disc standing still",
    num_frames=9,
    cut_frames=[5],
  ),
  dict(
    id="three",
    global_caption="Shapes.",
    shot_captions=["a yellow disc moving right"],
    num_frames=5,
    seed=3,
  ),
]
ARGS = [
  "--config",
  "configs/tiny.py:attention=sparse",
  "--random_init",
  "--no_progress",
  "--set",
  "sampler.num_steps=2",
]


def _write(path, lines):
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def test_data_parallel_batch_and_a_bad_line(tmp_path, monkeypatch):
  # 8 host devices: the two equal-shape scenes form one batch, padded to the 8-way batch sharding.
  monkeypatch.chdir(ROOT)
  scenes = tmp_path / "scenes.jsonl"
  _write(scenes, [json.dumps(SCENES[0]), '{"id": "bad", "num_frames": 9}', json.dumps(SCENES[1])])
  out = tmp_path / "out"
  report = sample.main([*ARGS, "--scenes", str(scenes), "--out", str(out)])
  assert sorted(report.done) == ["one", "two"]
  assert report.bad_lines == [
    "line 2: give either 'prompt' or both 'global_caption' and 'shot_captions'"
  ]
  for s in SCENES[:2]:
    frames, fps = video_io.read_mp4(out / f"{s['id']}.mp4")
    assert frames.shape == (s["num_frames"], 64, 64, 3) and fps == 15
    sidecar = json.loads((out / f"{s['id']}.json").read_text())
    assert sidecar["request"]["num_frames"] == s["num_frames"]
    assert sidecar["batch"] == ["one", "two"] and sidecar["timings"]["batch"] == 8
  assert json.loads((out / "two.json").read_text())["request"]["cut_frames"] == [5]
  again = sample.main([*ARGS, "--scenes", str(scenes), "--out", str(out)])
  assert again.done == [] and sorted(again.skipped) == ["one", "two"]


@pytest.mark.slow
def test_killed_run_resumes_with_exactly_the_missing_scenes(tmp_path):
  # One device, three scenes of two shapes (two batches); SIGKILL once the first is written.
  scenes = tmp_path / "scenes.jsonl"
  _write(scenes, [json.dumps(s) for s in SCENES])
  out = tmp_path / "out"
  cmd = [
    sys.executable,
    "-m",
    "holocine_jax.sample",
    *ARGS,
    "--scenes",
    str(scenes),
    "--out",
    str(out),
  ]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  proc = subprocess.Popen(
    cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  deadline = time.time() + 240
  while not (out / "one.json").exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  first = {p.name for p in out.iterdir() if not p.name.startswith(".")}
  assert "one.json" in first and "one.mp4" in first
  assert "three.json" not in first  # killed before the last scene
  stamp = os.path.getmtime(out / "one.mp4")
  result = subprocess.run(
    cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True
  )
  summary = json.loads(result.stdout[result.stdout.index("{") :])
  done_first = {n[: -len(".json")] for n in first if n.endswith(".json")}
  assert summary["done"] == 3 - len(done_first) and summary["skipped"] == len(done_first)
  assert os.path.getmtime(out / "one.mp4") == stamp
  assert sorted(p.name for p in out.iterdir() if p.name != job.LOCK_FILE) == sorted(
    f"{s['id']}.{ext}" for s in SCENES for ext in ("json", "mp4")
  )
  for s in SCENES:
    frames, fps = video_io.read_mp4(out / f"{s['id']}.mp4")
    assert frames.shape == (s["num_frames"], 64, 64, 3) and fps == 15
