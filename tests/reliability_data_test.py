"""Issue 21, data side: a non-UTF-8 manifest line is reported with its number and the rest runs
(7), snapped given cuts are reported (4), bad --fps and sizes are refused before anything runs
(8), an empty split is one clear error (10), and buckets that never fill a global batch are
reported with their counts (5)."""

import json
import os

import numpy as np
import pytest

from configs import tiny
from holocine_jax.data import clips, encoders, shards
from holocine_jax.sampling import video_io
from holocine_jax.training import dataset, pipeline, preprocess, synthetic

SPEC = dict(fps=8, height=32, width=48)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
  """A 40-frame 16 fps mp4: 20 frames at 8 fps, trimmed to 17."""
  path = tmp_path_factory.mktemp("videos") / "v.mp4"
  frames = np.random.default_rng(0).integers(0, 255, (40, 32, 48, 3), dtype=np.uint8)
  video_io.write_mp4(path, frames, fps=16)
  return path


def _manifest(folder, lines: list[bytes]) -> str:
  path = folder / "m.jsonl"
  path.write_bytes(b"\n".join(lines) + b"\n")
  return str(path)


def _line(i: int, **extra) -> bytes:
  shots = ["a", "b"] if "cut_frames" in extra else ["a"]
  return json.dumps(dict(video="v.mp4", global_caption=f"S{i}.", shot_captions=shots, **extra))


def _done_records(out) -> list[dict]:
  folder = os.path.join(dataset.output_dir(out), shards.RECORDS, "train")
  names = sorted(n for n in os.listdir(folder) if n.startswith("shard-"))
  return [json.load(open(os.path.join(folder, n))) for n in names]


def test_non_utf8_line_is_skipped_by_number_and_snapped_cuts_are_reported(video, tmp_path):
  scenes = _manifest(
    video.parent, [_line(1).encode(), b'{"video": "v.mp4", "global_caption": "caf\xe9"}',
                   _line(3, cut_frames=[7]).encode()]
  )  # fmt: skip
  out = tmp_path / "data"
  summary = preprocess.run(
    scenes, str(out), enc=encoders.toy(4, 24), spec=clips.ClipSpec(**SPEC), detect=None,
    settings={}, progress=False,
  )  # fmt: skip
  assert summary["written"] == 2 and summary["skipped"] == {"bad_line": 1}
  (record,) = _done_records(out)
  assert record["skipped"][0]["line"] == 2
  assert record["skipped"][0]["message"] == "not valid UTF-8 (byte 0xe9 at column 42)"
  assert record["warnings"] == [
    dict(line=3, message="cut_frames [7] snapped to [9] (frame counts and cuts are 4t+1: "
         "the VAE's frame groups)")
  ]  # fmt: skip
  source, _ = dataset.open_source(out)
  assert list(source[1]["latent_bounds"]) == [0, 3, 5]


@pytest.mark.parametrize(
  ("flags", "match"),
  [
    (["--fps", "0"], r"fps \(--fps\) must be a positive frame rate, got 0"),
    (["--height", "72", "--width", "120"], r"multiples of 16 .* got 72x120; e.g. 64x112"),
  ],
)
def test_bad_fps_and_sizes_are_refused_up_front(video, tmp_path, flags, match):
  scenes = _manifest(video.parent, [_line(1).encode()])
  out = tmp_path / "data"
  argv = ["--scenes", scenes, "--out", str(out), "--encoders", "toy", "--latent_channels", "4"]
  argv += ["--text_dim", "24", "--detector", "none", "--no_progress", "--fps", "8"]
  with pytest.raises(ValueError, match=match):
    preprocess.main([*argv, "--height", "32", "--width", "48", *flags])
  assert not out.exists()


def test_empty_or_missing_split_is_one_clear_error(tmp_path):
  dataset.build(tmp_path, lambda split: [], latent_channels=4, text_dim=24)
  with pytest.raises(ValueError, match=r"data.split='train' of the dataset in data.data_dir="):
    dataset.open_source(tmp_path, "train")
  with pytest.raises(ValueError, match=r"has 0 records"):
    dataset.longest_shots(tmp_path, "train")
  with pytest.raises(ValueError, match=r"data.split='valid' is not a split .* has \['train'\]"):
    dataset.open_source(tmp_path, "valid")


def test_buckets_smaller_than_the_global_batch_are_reported(capsys):
  config = tiny.get_config("samples=10,batch=6")
  source = synthetic.SyntheticSource.from_config(config.data, config.model)
  shapes = [source.latent_shape(i) for i in range(len(source))]
  assert sorted(shapes).count((4, 8, 8)) == 4  # the other 6 fill one global batch
  pipeline.from_config(source, shapes, config, (0, 6))
  out = capsys.readouterr().out
  assert (
    "warning: bucket 4x8x8 latents: 4 samples (0 padded) are never trained: fewer than "
    "train.global_batch=6" in out
  )
  assert "bucket 5x8x8 latents: 6 samples (0 padded), 1 batches per epoch" in out
