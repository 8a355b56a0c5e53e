"""Sampling from a training workdir: the params come back as trained (cast to the sampling
dtype, in the sampling shardings), a scene is sampled from the newest or a given step, and a
missing step, another architecture or other attention (unless allowed) fails with one clear
error before any model is built."""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from holocine_jax import config_file, sample
from holocine_jax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENE = dict(
  id="one",
  global_caption="Moving shapes on a dark background.",
  shot_captions=["a red disc moving left", "a blue square moving up"],
  num_frames=9,
  seed=1,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(workdir, params after 2 steps): tiny config, checkpoints at steps 1 and 2."""
  config = tiny.get_config("steps=2,ckpt_every=1")
  config.data.frame_choices = (17,)
  config.train.progress_bar = config.train.tensorboard = False
  workdir = str(tmp_path_factory.mktemp("train"))
  result = loop.train(config, workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:  # as the train CLI writes it
    json.dump(json.loads(config.to_json_best_effort()), f)
  return workdir, result.state.params["params"]


def _argv(workdir, tmp_path, *extra):
  scenes = tmp_path / "scenes.jsonl"
  scenes.write_text(json.dumps(SCENE) + "\n")
  return [
    "--config", "configs/tiny.py", "--checkpoint", workdir, "--scenes", str(scenes),
    "--out", str(tmp_path / "out"), "--no_progress", "--set", "sampler.num_steps=2", *extra,
  ]  # fmt: skip


def test_restored_params_are_the_trained_ones_in_the_sampling_dtype(trained, monkeypatch):
  monkeypatch.chdir(ROOT)
  workdir, params = trained
  config = config_file.load("configs/tiny.py", ["model.param_dtype=bfloat16"])
  start = time.perf_counter()
  gen = sample.build(config, sample.open_checkpoint(config, workdir, None))
  print(f"build with restore: {time.perf_counter() - start:.2f} s")
  assert gen.params_low is None  # train.expert=all: one model for every step
  restored = gen.params_high["params"]
  assert {x.dtype for x in jax.tree.leaves(restored)} == {jnp.dtype(jnp.bfloat16)}
  jax.tree.map(
    lambda got, want: np.testing.assert_array_equal(got, want.astype(jnp.bfloat16)),
    restored,
    params,
  )
  q = restored["blocks"]["self_attn"]["q"]["kernel"]  # [layers, embed (fsdp), heads, head_dim]
  assert len(q.sharding.device_set) == 8 and q.addressable_shards[0].data.shape == (2, 4, 2, 16)
  step_1 = sample.build(config, sample.open_checkpoint(config, workdir, 1)).params_high["params"]
  assert not np.array_equal(  # the step-1 checkpoint differs: steps really are told apart
    step_1["head"]["kernel"], restored["head"]["kernel"]
  )


def test_sample_a_scene_from_the_workdir(trained, tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  workdir, _ = trained
  report = sample.main(_argv(workdir, tmp_path, "--step", "1"))
  assert report.done == ["one"] and report.exit_code == 0
  with open(tmp_path / "out" / "one.json") as f:
    sidecar = json.load(f)
  assert sidecar["setup"]["weights"] == dict(training=dict(workdir=workdir, step=1))
  assert sidecar["step"] == 1 and sidecar["frames"] == [9, 64, 64, 3]
  again = sample.main(_argv(workdir, tmp_path))  # the newest step: the video is made again
  assert again.done == ["one"] and again.changed == {"one": ["weights"]}


@pytest.mark.parametrize(
  ("extra", "error", "match"),
  [
    (["--step", "7"], ValueError, r"has no step 7; it has steps \[1, 2\]"),
    (
      ["--set", "model.num_layers=3", "--set", "model.ffn_dim=128"],
      ValueError,
      r"training workdir .* has model.num_layers=2 \(config: 3\), model.ffn_dim=64 \(config: "
      r"128\); sample with the config it was made with",
    ),
    (["--set", "model.scan_layers=false"], ValueError, r"model.scan_layers=True \(config: False\)"),
    (
      ["--set", "model.self_attention=sparse", "--set", "model.window_cross_attention=false"],
      ValueError,
      r"training workdir .* has model.self_attention=full \(config: sparse\), "
      r"model.window_cross_attention=True \(config: False\); sample as trained \(--set "
      r"model.self_attention=full --set model.window_cross_attention=True\) or pass "
      "--allow_attention_change",
    ),
  ],
)
def test_bad_step_or_architecture_fails_before_building(
  trained, tmp_path, monkeypatch, extra, error, match
):
  monkeypatch.chdir(ROOT)
  monkeypatch.setattr(sample, "build", lambda *a, **k: pytest.fail("the model was built"))
  with pytest.raises(error, match=match):
    sample.main(_argv(trained[0], tmp_path, *extra))
  assert not os.path.exists(tmp_path / "out")


def test_step_needs_a_workdir_and_a_checkpoint_must_be_one_of_two_kinds(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  argv = _argv(str(tmp_path), tmp_path, "--step", "1")
  with pytest.raises(ValueError, match="--step is for training workdirs; no --checkpoint was"):
    sample.main([*argv[:2], "--random_init", *argv[4:]])
  with pytest.raises(FileNotFoundError, match="is neither a converted folder"):
    sample.main(argv)


def test_attention_change_is_sampled_when_allowed(trained, monkeypatch):
  monkeypatch.chdir(ROOT)
  config = config_file.load("configs/tiny.py", ["model.self_attention=sparse"])
  with pytest.raises(ValueError, match=r"model.self_attention=full \(config: sparse\)"):
    sample.open_checkpoint(config, trained[0], None)
  source = sample.open_checkpoint(config, trained[0], None, allow_attention_change=True)
  assert source.kind == "training" and source.step == 2 and source.experts == (("high", "low"),)
  assert source.config.self_attention == "sparse"  # the params are read for the config's model
  setup = sample.setup(config, source)
  assert setup["model"]["self_attention"] == "sparse"  # the fingerprint tells the videos apart
