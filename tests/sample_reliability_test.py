"""Sampling job reliability: nothing non-finite is written, exit codes, strict lines, resume by
content, one job per output directory."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from holocine_jax import sample
from holocine_jax.model import vae
from holocine_jax.sampling import job, requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = dict(guidance=[5.0, 5.0], height=16, width=16, steps=2, seed=0, negative_prompt="blurry")
ARGS = ["--config", "configs/tiny.py", "--random_init", "--no_progress"]
ARGS += ["--set", "sampler.num_steps=2"]


def _scene(rid, **fields):
  base = dict(id=rid, global_caption="Shapes.", shot_captions=["a disc", "a bar"], num_frames=9)
  return {**base, **fields}


def _requests(*scenes):
  return [requests.parse(s, i + 1, DEFAULTS) for i, s in enumerate(scenes)]


def _fake_generate(nonfinite=(), calls=None):
  """A generator of black frames that reports non-finite latents for the ids in `nonfinite`."""

  def generate(batch):
    if calls is not None:
      calls.append([r.id for r in batch])
    bad = [i for i, r in enumerate(batch) if r.id in nonfinite]
    if bad:
      raise job.NonFiniteOutputError("latents", bad)
    return [(np.zeros((r.scene.num_frames, 16, 16, 3), np.uint8), {}) for r in batch]

  return generate


def _written(out):
  return sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.exists() else []


def test_nonfinite_scene_fails_and_its_batch_mates_are_generated_alone(tmp_path):
  calls = []
  report = job.run(
    _requests(_scene("a"), _scene("b"), _scene("c")),
    lambda: _fake_generate({"b"}, calls),
    str(tmp_path),
    setup={},
    batch_size=4,
    progress=False,
  )
  assert calls == [["a", "b", "c"], ["a", "c"]]
  assert report.done == ["a", "c"] and list(report.failed) == ["b"]
  assert "NonFiniteOutputError: non-finite latents" in report.failed["b"]
  assert _written(tmp_path) == ["a.json", "a.mp4", "c.json", "c.mp4"]
  assert report.exit_code == 1


def test_nan_params_fail_every_scene_without_writing(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  build = sample.build

  def nan_build(*args, **kwargs):
    gen = build(*args, **kwargs)
    gen.params_high = jax.tree.map(lambda x: x * jnp.nan, gen.params_high)
    return gen

  monkeypatch.setattr(sample, "build", nan_build)
  scenes = tmp_path / "scenes.jsonl"
  scenes.write_text(json.dumps(_scene("one", height=32, width=32)) + "\n")
  out = tmp_path / "out"
  report = sample.main([*ARGS, "--scenes", str(scenes), "--out", str(out)])
  assert report.done == [] and list(report.failed) == ["one"]
  assert "non-finite latents" in report.failed["one"]
  assert _written(out) == [] and report.exit_code == 1


def test_vae_decode_reports_nonfinite_pixels_per_scene(monkeypatch):
  # the VAE itself replaced by one that decodes scene 1 to NaN pixels (a real one compiles ~50 s)
  pixels = jnp.zeros((3, 5, 16, 16, 3)).at[1, 2, 3, 4, 0].set(jnp.nan)
  monkeypatch.setattr(vae, "decode", lambda params, latents, config: pixels)
  frames, finite = sample.vae_decoder(None)(None, jnp.zeros((3, 2, 2, 2, 4)))
  assert frames.dtype == jnp.uint8 and frames.shape == (3, 5, 16, 16, 3)
  assert finite.tolist() == [True, False, True]


def test_a_job_whose_every_line_is_bad_exits_nonzero(tmp_path):
  bad = [requests.RequestError("line 1: not valid JSON"), requests.RequestError("line 2: x")]
  report = job.run(bad, pytest.fail, str(tmp_path), setup={}, progress=False)
  assert report.summary() == dict(
    done=0, skipped=0, changed={}, failed={}, bad_lines=[str(e) for e in bad], exit_code=1
  )


def test_a_valid_scene_is_not_failed_by_a_bad_batch_mate(tmp_path, monkeypatch):
  # Same shape (17 frames, 32x32): before, the three shared one 8-way batch and all failed with
  # the 4-shot scene's max_shots error (or the long prompt's text length error).
  monkeypatch.chdir(ROOT)
  scenes = tmp_path / "scenes.jsonl"
  good = _scene("good", num_frames=17, height=32, width=32)
  shots = {**good, "id": "shots", "shot_captions": ["a", "b", "c", "d"]}
  long = {**good, "id": "long", "global_caption": "many words " * 20}
  scenes.write_text("\n".join(json.dumps(s) for s in (shots, good, long)) + "\n")
  report = sample.main([*ARGS, "--scenes", str(scenes), "--out", str(tmp_path / "out")])
  assert report.done == ["good"] and report.failed == {}
  assert report.bad_lines == [
    "line 1: the scene has 4 shots but at most 3 are allowed (sample.max_shots)",
    "line 3: prompt has 53 toy tokens but text_len is 32",
  ]


def test_bad_config_default_fails_before_the_model_is_built(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  monkeypatch.setattr(sample, "build", lambda *a, **k: pytest.fail("the model was built"))
  scenes = tmp_path / "scenes.jsonl"
  scenes.write_text(json.dumps(_scene("a")) + "\n")
  argv = [*ARGS, "--set", "sampler.num_steps=0", "--scenes", str(scenes), "--out", str(tmp_path)]
  with pytest.raises(ValueError, match="config sampler.num_steps: 'steps' must be >= 1, got 0"):
    sample.main(argv)


def _run(out, scenes, setup, calls=None):
  return job.run(
    _requests(*scenes), lambda: _fake_generate((), calls), str(out), setup=setup, progress=False
  )


def test_rerun_regenerates_exactly_the_scenes_whose_content_changed(tmp_path):
  setup = dict(model=dict(dim=32), weights=dict(random_init=True, seed=0))
  a, b = _scene("a"), _scene("b", seed=1)
  assert _run(tmp_path, [a, b], setup).done == ["a", "b"]
  stamp = os.path.getmtime(tmp_path / "a.mp4")
  calls = []
  again = _run(tmp_path, [a, b], setup, calls)
  assert again.skipped == ["a", "b"] and calls == []  # nothing to do: no generator is made
  edited = {**b, "seed": 2, "shot_captions": ["a disc", "a square"]}
  report = _run(tmp_path, [a, edited], setup, calls)
  assert report.skipped == ["a"] and report.done == ["b"] and calls == [["b"]]
  assert report.changed == {"b": ["prompt", "seed", "shot_captions"]}
  assert json.loads((tmp_path / "b.json").read_text())["request"]["seed"] == 2
  new_model = {**setup, "model": dict(dim=64)}
  report = _run(tmp_path, [a, edited], new_model)
  assert report.changed == {"a": ["model"], "b": ["model"]} and report.done == ["a", "b"]
  assert os.path.getmtime(tmp_path / "a.mp4") >= stamp
  assert _run(tmp_path, [a, edited], new_model).skipped == ["a", "b"]


def test_unreadable_sidecar_is_generated_again(tmp_path):
  _run(tmp_path, [_scene("a")], {})
  (tmp_path / "a.json").write_text("{not json")
  report = _run(tmp_path, [_scene("a")], {})
  assert report.done == ["a"] and report.changed == {"a": ["made before sidecars recorded a "
                                                          "fingerprint"]}  # fmt: skip


def test_setup_follows_what_determines_the_video():
  config = tiny.get_config()
  base = sample.setup(config, random_init=True)
  config.sampler.num_steps = 3  # a default, resolved into each request: not part of the setup
  config.sample.swap_experts = True  # memory only
  assert sample.setup(config, random_init=True) == base
  config.sampler.shift = 3.0
  assert sample.setup(config, random_init=True)["sampler"] != base["sampler"]
  config.model.dim = 64
  assert sample.setup(config, random_init=True)["model"]["dim"] == 64


def test_one_job_per_output_directory(tmp_path):
  out = str(tmp_path / "out")
  with (
    job.exclusive(out),
    pytest.raises(
      job.OutputDirError,
      match=rf"--out {out} is in use by another sampling job \(pid {os.getpid()} on host ",
    ),
    job.exclusive(out),
  ):
    pass
  with job.exclusive(out):  # released when the first job ended
    pass


def test_stale_lock_is_taken_over_with_a_message(tmp_path):
  (tmp_path / job.LOCK_FILE).write_text("pid 999999 on host gone\n")
  messages = []
  with job.exclusive(str(tmp_path), log=messages.append):
    pass
  assert messages == [f"taking over the lock on {tmp_path} from a job that is gone (pid 999999 on "
                      "host gone)"]  # fmt: skip


def test_unusable_out_fails_before_the_model_is_built(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  monkeypatch.setattr(sample, "build", lambda *a, **k: pytest.fail("the model was built"))
  scenes = tmp_path / "scenes.jsonl"
  scenes.write_text(json.dumps(_scene("a")) + "\n")
  a_file = tmp_path / "file"
  a_file.write_text("")
  with pytest.raises(job.OutputDirError, match=f"--out {a_file}/out is not a writable directory"):
    sample.main([*ARGS, "--scenes", str(scenes), "--out", f"{a_file}/out"])
  held = pytest.raises(job.OutputDirError, match="is in use by another sampling job")
  with job.exclusive(str(tmp_path / "out")), held:
    sample.main([*ARGS, "--scenes", str(scenes), "--out", str(tmp_path / "out")])
