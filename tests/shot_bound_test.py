"""Static shot-length bounds: per batch when sampling, from the whole dataset when training."""

import dataclasses
import json
import os

import numpy as np
import pytest

from configs import tiny
from holocine_jax import layout, sample, toy_text
from holocine_jax.sampling import generator, requests
from holocine_jax.scene import Scene
from holocine_jax.training import dataset, pipeline, synthetic


def test_round_shot_bound():
  assert [layout.round_shot_bound(n, 61) for n in (1, 4, 5, 13, 61)] == [4, 4, 8, 16, 61]
  assert layout.round_shot_bound(5, 6) == 6  # capped at the clip


def test_sampling_bounds_shots_by_the_batch_not_the_clip(monkeypatch):
  gen = sample.build(tiny.get_config("attention=sparse"), random_init=True)
  seen = []

  def fake_sampler(self, steps, guidance):
    del self, steps, guidance
    return lambda high, low, noise, context, shots: seen.append(shots.max_shot_frames) or noise

  monkeypatch.setattr(generator.Generator, "_sampler", fake_sampler)
  # 37 frames = 10 latent frames; cuts at frames 9 and 21 -> latent bounds (0, 3, 6, 10).
  scene = Scene.create("Shapes.", ["a red disc", "a blue bar", "a green square"], 37, [9, 21])
  assert scene.latent_bounds() == (0, 3, 6, 10)
  request = requests.SceneRequest("a", scene, 0, 64, 64, 2, (5.0, 5.0), "", 1)
  ((video, _),) = gen([request])
  assert video.shape == (37, 64, 64, 3)
  dataclasses.replace(gen, max_shot_frames=6)([request])
  assert seen == [4, 6]  # the longest shot (4) rounded to 4, not the clip's 10; or the override


def _tfds_dataset(path, bounds_list):
  """A tfds dataset of 13-latent-frame clips with the given latent shot bounds."""

  def examples(split):
    del split
    for bounds in bounds_list:
      cuts = [4 * (c - 1) + 1 for c in bounds[1:-1]]  # latent frame c starts at frame 4(c-1)+1
      scene = Scene.create("Shapes.", ["a red disc"] * (len(bounds) - 1), 49, cuts)
      assert scene.latent_bounds() == bounds
      context_NxE, ranges = toy_text.toy_text_embedding(scene.prompt(), 24)
      yield dict(
        latents=np.zeros((13, 4, 4, 4), np.float32),
        context=context_NxE,
        latent_bounds=np.asarray(bounds, np.int32),
        text_ranges=ranges,
      )

  dataset.build(path, examples, latent_channels=4, text_dim=24)
  config = tiny.get_config("batch=2")
  config.data.update(source="tfds", data_dir=str(path), max_shot_frames=0)
  return config


def test_training_bound_comes_from_the_datasets_longest_shot(tmp_path, capsys):
  config = _tfds_dataset(tmp_path, [(0, 4, 8, 13), (0, 3, 8, 13), (0, 5, 10, 13)] * 2)
  assert pipeline.longest_shots(config) == [5, 5, 5] * 2
  keys = [(13, 4, 4)] * 6
  # 5 rounded up to 4s: not the whole 13-frame clip
  assert pipeline.shot_bounds(config, keys) == {(13, 4, 4): 8}
  source, shapes = dataset.open_source(config.data.data_dir)
  batch = next(iter(pipeline.from_config(source, shapes, config, (0, 2))))
  out = capsys.readouterr().out
  assert (
    "bucket 13x4x4 latents: 6 samples (0 padded), 3 batches per epoch, shots bounded by 8" in out
  )
  assert batch["shots"].max_shot_frames == 8
  config.data.max_shot_frames = 12  # an explicit bound overrides
  assert pipeline.shot_bounds(config, keys) == {(13, 4, 4): 12}
  config.data.max_shot_frames = 4
  with pytest.raises(ValueError, match=r"data.max_shot_frames=4 but the dataset has a shot of 5"):
    pipeline.shot_bounds(config, keys)


def test_training_bound_on_a_dataset_without_shot_lengths(tmp_path):
  config = _tfds_dataset(tmp_path, [(0, 4, 8, 13)] * 2)
  meta_path = os.path.join(dataset.version_dir(tmp_path), "metadata.json")
  with open(meta_path) as f:
    metadata = json.load(f)
  del metadata[dataset.SHOTS_KEY]  # as written before HoloCineShots 1.1.0
  with open(meta_path, "w") as f:
    json.dump(metadata, f)
  keys = [(13, 4, 4)] * 2
  with pytest.raises(ValueError, match="without shot lengths.*set data.max_shot_frames"):
    pipeline.shot_bounds(config, keys)
  config.data.max_shot_frames = 6
  assert pipeline.shot_bounds(config, keys) == {(13, 4, 4): 6}


def test_synthetic_bound_scans_every_sample():
  config = tiny.get_config("samples=64")
  config.data.update(frame_choices=(41,), max_shots=6, max_shot_frames=0)
  source = synthetic.SyntheticSource.from_config(config.data, config.model)
  longest = [max(np.diff(source.scene(i)[0].latent_bounds())) for i in range(64)]
  assert pipeline.longest_shots(config) == longest
  keys = [(11, 8, 8)] * 64
  assert pipeline.shot_bounds(config, keys) == {keys[0]: layout.round_shot_bound(max(longest), 11)}
  config.data.max_shot_frames = -1
  with pytest.raises(ValueError, match="data.max_shot_frames must be >= 0"):
    pipeline.shot_bounds(config, keys)
