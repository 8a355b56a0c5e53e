"""Sampling during training (train.sample_every): one folder of videos per round, contact sheets
in TensorBoard, a resumed run never redoes a round, a failed sample does not stop training, and
settings that cannot sample are refused at startup naming the field."""

import contextlib
import glob
import io
import json
import os
import struct
import types

import jax.numpy as jnp
import pytest
from tensorboardX.proto import event_pb2

from configs import tiny
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT
from holocine_jax.sampling import generator, pipeline, video_io
from holocine_jax.sampling.pipeline import SamplerConfig
from holocine_jax.training import loop, metrics, samples
from tests import support
from tests.support import ROOT, local_multihost

TOY_IDS = [f"toy{i:03d}" for i in range(samples.TOY_SCENES)]


def _config(steps: int):
  config = tiny.get_config(f"steps={steps},ckpt_every=2")
  config.data.frame_choices = (17,)  # one shape bucket: one compile
  config.train.progress_bar = False
  config.train.sample_every = 2
  config.sampler.num_steps = 2
  return config


def _events(workdir) -> dict[tuple[str, str], dict[int, float | None]]:
  """(tag, 'image' | 'scalar') -> {step: scalar value or None} of every TensorBoard event file."""
  out = {}
  for path in glob.glob(os.path.join(workdir, "tensorboard", "*")):
    with open(path, "rb") as f:
      data, i = f.read(), 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i : i + 8])
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
      i += n + 16  # length, its crc, the record, its crc
      for v in event.summary.value:
        kind = "image" if v.HasField("image") else "scalar"
        value = v.simple_value if kind == "scalar" else None
        out.setdefault((v.tag, kind), {})[event.step] = value
  return out


def _compiled_stages(config) -> int:
  """Compiled programs of the denoising stage that sampling with `config` uses."""
  model = WanDiT(DiTConfig.from_config(config.model))
  sampler = generator._cached_sampler(model, SamplerConfig.from_config(config.sampler))
  return sampler.stage._cache_size()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """Trains 2 steps, then resumes to 6 with the step-4 round's latents made NaN."""
  workdir = str(tmp_path_factory.mktemp("train_samples"))
  loop.train(_config(2), workdir)
  first = {p: os.path.getmtime(p) for p in glob.glob(f"{workdir}/samples/step_2/*")}
  compiled = _compiled_stages(_config(2))
  real, calls = pipeline.Sampler.__call__, []

  def nan_first_round(self, *args):
    calls.append(None)
    latents = real(self, *args)
    return latents * jnp.nan if len(calls) == 1 else latents

  printed = io.StringIO()
  with pytest.MonkeyPatch.context() as m, contextlib.redirect_stdout(printed):
    m.setattr(pipeline.Sampler, "__call__", nan_first_round)
    result = loop.train(_config(6), workdir)
  return types.SimpleNamespace(
    workdir=workdir,
    result=result,  # of the resumed run
    printed=printed.getvalue(),  # by the resumed run
    first=first,  # step-2 files -> mtime after the first run
    compiled=(compiled, _compiled_stages(_config(6))),  # stage programs after each run
  )


def test_rounds_write_videos_and_sidecars_naming_the_step(run):
  workdir = run.workdir
  assert sorted(os.listdir(f"{workdir}/samples")) == ["step_2", "step_6"]  # step 4 failed
  for step in (2, 6):
    out = f"{workdir}/samples/step_{step}"
    assert sorted(os.listdir(out)) == sorted(f"{i}.{e}" for i in TOY_IDS for e in ("json", "mp4"))
    with open(f"{out}/toy000.json") as f:
      sidecar = json.load(f)
    assert sidecar["step"] == step
    assert sidecar["setup"]["weights"] == dict(training=dict(workdir=workdir, step=step))
    assert sidecar["request"]["steps"] == 2 and sidecar["frames"] == [17, 64, 64, 3]
    frames, _ = video_io.read_mp4(f"{out}/toy000.mp4")
    assert frames.shape == (17, 64, 64, 3)


def test_contact_sheets_and_round_scalars_in_tensorboard(run):
  events = _events(run.workdir)
  for scene in TOY_IDS:
    assert sorted(events[(f"samples/{scene}", "image")]) == [2, 6]
  assert events[("samples/failed", "scalar")] == {2: 0.0, 4: 4.0, 6: 0.0}
  assert sorted(events[("samples/seconds", "scalar")]) == [2, 4, 6]


def test_later_rounds_do_not_compile(run):
  # The resumed run's rounds (other params, a new generator) reuse the first run's programs.
  assert run.compiled[0] > 0 and run.compiled[1] == run.compiled[0]


def test_failed_samples_are_reported_and_training_goes_on(run):
  assert run.result.start_step == 2 and sorted(run.result.losses) == [3, 4, 5, 6]
  assert not os.path.exists(f"{run.workdir}/samples/step_4")  # nothing non-finite is written
  for scene in TOY_IDS:
    assert f"scene {scene} (line {int(scene[3:]) + 1}) failed: NonFiniteOutputError" in run.printed
  assert "samples at step 4: 0 new, 0 already there, 4 failed" in run.printed


def test_resume_never_redoes_a_round(run):
  first = run.first
  assert {p: os.path.getmtime(p) for p in first} == first and len(first) == 8
  # A run resumed from a checkpoint before a round it already sampled skips its scenes (the
  # fingerprint names the workdir and step), whatever the params.
  writer = metrics.MetricWriter(
    run.workdir, start_step=0, total_steps=6, tensorboard=False, progress_bar=False
  )
  with contextlib.redirect_stdout(io.StringIO()):
    report = samples.Samples(_config(6), run.workdir)(2, run.result.state.params, writer)
  assert report.done == [] and sorted(report.skipped) == TOY_IDS
  assert {p: os.path.getmtime(p) for p in first} == first


def test_settings_that_cannot_sample_are_refused_naming_the_field(tmp_path):
  config = _config(4)
  config.data.source = "tfds"
  with pytest.raises(ValueError, match=r"train\.sample_scenes must name a sampling JSONL file"):
    loop.check_config(config)
  config.train.sample_scenes = str(tmp_path / "missing.jsonl")
  with pytest.raises(ValueError, match=r"train\.sample_scenes '.*missing.jsonl' is not a file"):
    loop.check_config(config)
  config = _config(4)
  config.train.sample_every = -1
  with pytest.raises(ValueError, match=r"train\.sample_every must be an integer >= 0"):
    loop.check_config(config)
  config = _config(4)
  config.sample.decoder = "vae"
  with pytest.raises(ValueError, match=r"sample\.decoder='vae': sampling during training"):
    loop.check_config(config)
  config.train.sample_every = 0  # off: the sample block is not looked at
  loop.check_config(config)


def test_a_bad_scene_line_is_refused_before_training(tmp_path):
  scenes = tmp_path / "scenes.jsonl"
  good = dict(id="a", global_caption="Shapes.", shot_captions=["a red disc"], num_frames=17)
  scenes.write_text(json.dumps(good) + '\n{"id": "b"}\n')
  config = _config(4)
  config.train.sample_scenes = str(scenes)
  with pytest.raises(
    ValueError, match=r"train\.sample_scenes .*scenes.jsonl: line 2: 'num_frames' is required$"
  ):
    loop.train(config, tmp_path / "workdir")
  scenes.write_text(json.dumps(good) + "\n")
  assert [r.id for r in samples.read_scenes(config)] == ["a"]


@pytest.mark.slow
def test_two_processes_sample_together_and_process_zero_writes(tmp_path):
  workdir = tmp_path / "two"
  overrides = (
    "data.frame_choices=(17,)", "train.progress_bar=false", "train.sample_every=2",
    "sampler.num_steps=2",
  )  # fmt: skip
  codes = local_multihost.launch(
    os.path.join(ROOT, "configs/tiny.py:steps=2"), str(workdir), processes=2,
    devices_per_process=4, overrides=overrides, xla_flags=support.FAST_XLA_FLAGS,
    timeout=300,
  )  # fmt: skip
  logs = [(workdir / "logs" / f"process_{i}.log").read_text() for i in range(2)]
  assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
  assert "samples at step 2: 4 new, 0 already there, 0 failed" in logs[0]
  assert "samples at" not in logs[1]
  assert len(glob.glob(f"{workdir}/samples/step_2/*.mp4")) == samples.TOY_SCENES
