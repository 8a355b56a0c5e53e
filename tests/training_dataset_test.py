"""The tfds ArrayRecord dataset: shards written on their own (empty ones included) and joined by
`write_info` into one dataset that tfds, grain and the training pipeline read back."""

import json
import os

import numpy as np
import pytest

from configs import tiny
from holocine_jax.training import dataset, pipeline, synthetic

DIMS = dict(latent_channels=4, text_dim=24)


def _records(num, seed=0):
  source = synthetic.SyntheticSource(
    num_samples=num, frame_choices=(9, 17), height=4, width=6, channels=4, text_dim=24,
    max_shots=3, seed=seed,
  )  # fmt: skip
  return [source[i] for i in range(num)]


def test_build_round_trip_and_pipeline(tmp_path):
  records = _records(8)
  path = dataset.build(tmp_path, lambda split: iter(records), **DIMS)
  assert path == os.path.join(tmp_path, dataset.NAME, dataset.VERSION)
  source, shapes = dataset.open_source(tmp_path, "train")
  assert len(source) == 8 and shapes == [r["latents"].shape[:3] for r in records]
  for i in (0, 5):
    got, want = source[i], records[i]
    np.testing.assert_allclose(got["latents"].astype(np.float32), want["latents"], atol=2e-3)
    np.testing.assert_allclose(got["context"].astype(np.float32), want["context"], atol=3e-3)
    np.testing.assert_array_equal(got["latent_bounds"], want["latent_bounds"])
    np.testing.assert_array_equal(got["text_ranges"], want["text_ranges"])
    assert got["prompt"].decode() == want["prompt"]
  assert dataset.longest_shots(tmp_path) == [
    int(np.diff(r["latent_bounds"]).max()) for r in records
  ]

  config = tiny.get_config("batch=2")
  config.data.update(source="tfds", data_dir=str(tmp_path), max_shot_frames=0)
  batch = next(iter(pipeline.from_config(source, shapes, config, (0, 2))))
  assert batch["latents"].shape[0] == 2 and batch["context"].shape == (2, 32, 24)


def test_shards_written_apart_form_one_dataset(tmp_path):
  version_dir = dataset.output_dir(tmp_path)
  os.makedirs(version_dir)
  groups = [_records(3, seed=1), [], _records(2, seed=2)]  # an empty shard: all lines skipped
  stats = []
  for k in (2, 0, 1):  # any order, as hosts finish
    path = dataset.shard_path(version_dir, "train", k, 3)
    stats.append((k, dataset.write_shard(path, iter(groups[k]), **DIMS)))
  stats = [dict(s, lines=[10 * k + i for i in range(s["examples"])]) for k, s in sorted(stats)]
  assert [s["examples"] for s in stats] == [3, 0, 2]
  with pytest.raises(FileNotFoundError, match="preprocessing has not finished"):
    dataset.open_source(tmp_path)
  val = dataset.write_shard(dataset.shard_path(version_dir, "val", 0, 1), iter(_records(1)), **DIMS)
  dataset.write_info(version_dir, {"train": stats, "val": [val]}, **DIMS)

  source, shapes = dataset.open_source(tmp_path, "train")
  want = groups[0] + groups[2]
  assert len(source) == 5 and shapes == [r["latents"].shape[:3] for r in want]
  assert [source[i]["prompt"].decode() for i in range(5)] == [r["prompt"] for r in want]
  assert len(dataset.open_source(tmp_path, "val")[0]) == 1
  with open(os.path.join(version_dir, "metadata.json")) as f:
    metadata = json.load(f)
  assert metadata[dataset.LINES_KEY] == {"train": [0, 1, 2, 20, 21], "val": [0]}
  with open(os.path.join(version_dir, "dataset_info.json")) as f:
    info = json.load(f)
  assert info["version"] == dataset.VERSION and info["splits"][0]["shardLengths"] == ["3", "0", "2"]
  assert not [n for n in os.listdir(version_dir) if n.startswith(".")]  # no temp files left


def test_missing_dataset_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"no {dataset.NAME} dataset under"):
    dataset.open_source(tmp_path)
