"""Real data in: tiny mp4s written here (coloured shots, hard cuts at known frames, a fade, a
corrupt file, a short one) -> manifest -> records with the converted VAE + umT5 and TransNet V2
cuts -> two train steps; bad lines reported and skipped; a kill and rerun; two hosts."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import tiny
from holocine_jax import convert
from holocine_jax.data import clips, cuts, encoders, manifest, shards, video_decode
from holocine_jax.sampling import video_io
from holocine_jax.training import dataset, loop, pipeline, preprocess
from tests import support

SOURCE_FPS, FPS = 16, 8  # videos are written at 16 fps and preprocessed at 8
CUTS = [9, 21]  # hard.mp4's cuts at 8 fps (source frames 18 and 42)
COLOURS = [((200, 30, 30), (240, 240, 80)), ((20, 40, 180), (250, 250, 250)),
           ((30, 160, 60), (120, 0, 120))]  # fmt: skip
SHOTS = ["a red disc", "a blue disc", "a green disc"]
CLIP = ["--fps", str(FPS), "--height", "32", "--width", "48", "--no_progress"]


def _shot(seed, colours, frames, h=72, w=112):
  """[frames, h, w, 3]: a disc moving over a flat background."""
  (bg, fg), rng = colours, np.random.default_rng(seed)
  y, x = np.mgrid[:h, :w]
  cy, cx = rng.uniform(0, h), rng.uniform(0, w)
  out = np.empty((frames, h, w, 3), np.uint8)
  for t in range(frames):
    out[t] = bg
    out[t][((y - cy - t) % h - h / 2) ** 2 + ((x - cx - 2 * t) % w - w / 2) ** 2 < (h / 5) ** 2] = (
      fg
    )
  return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  folder = tmp_path_factory.mktemp("videos")
  hard = [_shot(i, c, n) for i, (c, n) in enumerate(zip(COLOURS, (18, 24, 24), strict=True))]
  video_io.write_mp4(folder / "hard.mp4", np.concatenate(hard), fps=SOURCE_FPS)
  a, b = _shot(3, COLOURS[0], 40), _shot(4, COLOURS[1], 40)
  alpha = np.linspace(0, 1, 10)[:, None, None, None]  # source frames 28..37: frames 14..18 at 8
  fade = np.concatenate(
    [a[:28], (a[28:38] * (1 - alpha) + b[:10] * alpha).astype(np.uint8), b[10:]]
  )
  video_io.write_mp4(folder / "fade.mp4", fade, fps=SOURCE_FPS)
  video_io.write_mp4(folder / "short.mp4", hard[0][:6], fps=SOURCE_FPS)  # 3 frames at 8 fps
  (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
  thirds = np.zeros((4, 64, 192, 3), np.uint8)
  for i in range(3):
    thirds[:, :, 64 * i : 64 * (i + 1), i] = 255  # red | green | blue columns
  video_io.write_mp4(folder / "thirds.mp4", thirds, fps=SOURCE_FPS)
  return folder


@pytest.fixture(scope="module")
def detect():
  return cuts.transnetv2(batch_size=1)


def _write_manifest(folder, name, entries) -> str:
  path = folder / name
  path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in entries))
  return str(path)


def _scene(i, video="hard.mp4", shots=SHOTS, **extra):
  return dict(video=video, global_caption=f"Scene {i}.", shot_captions=shots, **extra)


def test_decode_resamples_resizes_and_crops(videos):
  frames = video_decode.decode(videos / "hard.mp4", fps=FPS, height=32, width=48)
  assert frames.shape == (33, 32, 48, 3) and frames.dtype == np.uint8
  background = np.median(frames.reshape(33, -1, 3), axis=1)  # the disc covers < 1/10
  want = [COLOURS[0][0]] * 9 + [COLOURS[1][0]] * 12 + [COLOURS[2][0]] * 12
  np.testing.assert_allclose(background, want, atol=12)
  assert len(video_decode.decode(videos / "hard.mp4", fps=16, height=32, width=48)) == 66
  assert len(video_decode.decode(videos / "hard.mp4", fps=24, height=32, width=48)) == 99
  assert (
    len(video_decode.decode(videos / "hard.mp4", fps=24, height=32, width=48, max_frames=7)) == 7
  )
  middle = video_decode.decode(videos / "thirds.mp4", fps=FPS, height=32, width=32)
  np.testing.assert_allclose(middle[:, 2:-2, 2:-2].mean((0, 1, 2)), [0, 255, 0], atol=12)
  for name, reason in (("corrupt.mp4", "corrupt"), ("missing.mp4", "unreadable")):
    with pytest.raises(video_decode.VideoError, match=name) as e:
      video_decode.decode(videos / name, fps=FPS, height=32, width=48)
    assert e.value.reason == reason


def test_transnet_finds_the_known_cuts(videos, detect):
  frames = video_decode.decode(videos / "hard.mp4", fps=FPS, height=32, width=48)
  assert detect(frames) == CUTS
  fade = video_decode.decode(videos / "fade.mp4", fps=FPS, height=32, width=48)
  (cut,) = detect(fade)
  assert 14 <= cut <= 19  # one cut, at the end of the fade (frames 14..18)


def test_manifest_lines_are_strict(tmp_path):
  good = dict(video="a.mp4", global_caption="G.", shot_captions=["a", "b"])
  bad = [
    ('{"video": "a.mp4"', "line 1: not valid JSON"),
    ("[1]", "line 2: expected a JSON object, got a list"),
    (dict(good, extra=1), r"line 3: unknown fields \['extra'\]"),
    (dict(good, shot_captions="a"), "line 4: 'shot_captions' must be a list of strings"),
    (
      dict(good, shot_captions=["a", None]),
      "line 5: 'shot_captions\\[1\\]' must be a string, got null",
    ),
    (dict(good, video="a.gif"), "line 6: 'video' must be one of .mp4"),
    (dict(good, cut_frames=[4.5]), "line 7: 'cut_frames\\[0\\]' must be an integer"),
    (dict(good, cut_frames=[5, 9]), "line 8: 'cut_frames' has 2 cuts but 2 shot captions need 1"),
    (dict(good, cut_times=[-1.0]), "line 9: 'cut_times\\[0\\]' must be > 0 seconds"),
    (dict(good, cut_times=[1.0], cut_frames=[5]), "line 10: give 'cut_frames' or 'cut_times'"),
    ({k: v for k, v in good.items() if k != "video"}, "line 11: missing 'video'"),
    (dict(good, shot_captions=["a", " "]), "line 12: shot caption 1 is empty"),
    (dict(good, global_caption=True), "line 13: 'global_caption' must be a string, got a boolean"),
    (
      dict(good, cut_frames=[9, 5], shot_captions=["a", "b", "c"]),
      "line 14: .* strictly increasing",
    ),
  ]
  lines = manifest.read_lines(_write_manifest(tmp_path, "m.jsonl", [b for b, _ in bad]))
  for line, (_, match) in zip(lines, bad, strict=True):
    with pytest.raises(manifest.ManifestError, match=match):
      manifest.parse(line, str(tmp_path))
  entry = manifest.parse(manifest.Line(3, json.dumps(dict(good, cut_times=[1.12]))), "/data")
  assert entry.video == "/data/a.mp4" and entry.cuts(fps=16) == (18,) and entry.line == 3


def _tokenizer(folder):
  spm = pytest.importorskip("sentencepiece")
  words = " ".join(
    ["[global caption] Scene 1. This scene contains 3 shots. [per shot caption]", *SHOTS]
  )
  (folder / "corpus.txt").write_text("\n".join([words, "[shot cut] a fade"] * 50))
  spm.SentencePieceTrainer.train(
    input=str(folder / "corpus.txt"), model_prefix=str(folder / "sp"), vocab_size=60,
    pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
  )  # fmt: skip
  return str(folder / "sp.model")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """(converted folder with a tiny random Wan VAE and umT5 from torch, tokenizer path)."""
  root = tmp_path_factory.mktemp("torch_models")
  support.t5_model().save_pretrained(root / "text_encoder")
  support.vae_model().save_pretrained(root / "vae")
  (root / "config.py").write_text(support.CONFIG)
  out = root / "converted"
  argv = ["--src", str(root), "--format", "diffusers", "--config", str(root / "config.py")]
  convert.main([*argv, "--out", str(out), "--no_progress"])
  return str(out), _tokenizer(root)


def test_model_encoders_records_then_two_train_steps(videos, checkpoint, tmp_path, monkeypatch):
  monkeypatch.chdir(support.ROOT)
  folder, tokenizer = checkpoint
  scenes = _write_manifest(
    videos,
    "model.jsonl",
    [
      _scene(1),  # cuts detected: 9, 21
      _scene(2),
      _scene(3, "fade.mp4", SHOTS[:2], cut_frames=[17]),  # given, near the detected cut
      *(_scene(i, cut_frames=CUTS) for i in range(10, 15)),  # 8 clips: one global batch
      _scene(4, "corrupt.mp4"),
      _scene(5, "short.mp4"),
      _scene(6, "missing.mp4"),
      _scene(7, shots=SHOTS[:2]),  # 2 captions, 2 cuts detected
      _scene(8, shots=["a red disc " * 200, *SHOTS[1:]]),  # over 512 tokens
      _scene(9, cut_frames=[5, 29]),  # 29 is 8 frames from the cut at 21: dropped
      "{not json",
    ],
  )
  out = str(tmp_path / "data")
  argv = ["--scenes", scenes, "--out", out, "--encoders", "model", "--checkpoint", folder]
  argv += ["--tokenizer", tokenizer, "--detector_batch", "1", "--drop_cut_mismatch", *CLIP]
  start = time.perf_counter()
  summary = preprocess.main(argv)
  print(f"preprocess with the model encoders: {time.perf_counter() - start:.1f} s")
  assert summary["written"] == 8 and summary["lines"] == 15
  assert summary["skipped"] == dict(
    bad_line=1, caption_too_long=1, corrupt=1, cut_count=1, cut_mismatch=1, too_short=1,
    unreadable=1,
  )  # fmt: skip
  assert summary["dataset"]["written"] == 8
  source, shapes = dataset.open_source(out)
  assert shapes == [(9, 4, 6)] * 8  # 33 frames at 8 fps (fade.mp4's 34 trimmed to 4t+1)
  assert list(source[0]["latent_bounds"]) == [0, 3, 6, 9]  # TransNet's cuts 9, 21
  assert list(source[2]["latent_bounds"]) == [0, 5, 9]  # the given cut 17
  assert source[0]["context"].shape[1] == 32  # umT5 d_model
  assert np.isfinite(source[0]["latents"].astype(np.float32)).all()

  config = tiny.get_config("batch=8,steps=2")
  config.model.text_dim = 32
  config.data.update(source="tfds", data_dir=out, text_len=512, max_shot_frames=0)
  config.train.progress_bar = config.train.tensorboard = False
  result = loop.train(config, str(tmp_path / "workdir"))
  assert sorted(result.losses) == [1, 2] and all(np.isfinite(list(result.losses.values())))


def _toy(scenes, out, *extra):
  argv = ["--scenes", scenes, "--out", str(out), "--encoders", "toy", "--latent_channels", "4"]
  return [*argv, "--text_dim", "24", *CLIP, *extra]


def _caption(record) -> str:
  """The global caption of a record's prompt."""
  prompt = record["prompt"].decode()
  return prompt.removeprefix("[global caption] ").split(" This scene contains")[0]


def _records(out):
  """{shard index: done-record} of the train split."""
  folder = os.path.join(dataset.output_dir(out), shards.RECORDS, "train")
  names = sorted(n for n in os.listdir(folder) if n.startswith("shard-"))
  return {int(n[6:11]): json.load(open(os.path.join(folder, n))) for n in names}


def test_kill_then_rerun_has_every_record_once(videos, tmp_path, monkeypatch):
  monkeypatch.chdir(support.ROOT)
  scenes = _write_manifest(videos, "kill.jsonl", [_scene(i) for i in range(6)])
  out = tmp_path / "data"
  argv = _toy(scenes, out, "--shard_size", "1", "--detector_batch", "1")
  with open(tmp_path / "log.txt", "w") as log:
    proc = subprocess.Popen(
      [sys.executable, "-m", "holocine_jax.training.preprocess", *argv],
      cwd=support.ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    folder = os.path.join(dataset.output_dir(out), shards.RECORDS, "train")
    deadline = time.time() + 300
    while not (os.path.isdir(folder) and any(n.startswith("shard-") for n in os.listdir(folder))):
      assert proc.poll() is None, (tmp_path / "log.txt").read_text()
      assert time.time() < deadline, "no shard finished in 300 s"
      time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  finished = _records(out)
  assert 1 <= len(finished) < 6, "the kill came after the last shard"
  pending = min(set(range(6)) - set(finished))
  path = dataset.shard_path(dataset.output_dir(out), "train", pending, 6)
  with open(os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.x"), "wb") as f:
    f.write(b"half a shard")  # as a kill in the middle of writing it leaves it
  with pytest.raises(FileNotFoundError, match="preprocessing has not finished"):
    dataset.open_source(out)

  summary = preprocess.main(argv)
  assert summary["shards"] == 6 and summary["written"] == 6 and summary["skipped"] == {}
  source, _ = dataset.open_source(out)
  lines = [r["lines"] for _, r in sorted(_records(out).items())]
  assert lines == [[n] for n in range(1, 7)]
  assert [_caption(source[i]) for i in range(len(source))] == [f"Scene {i}." for i in range(6)]
  leftovers = [n for n in os.listdir(dataset.output_dir(out)) if n.startswith(".")]
  assert leftovers == []


def test_two_hosts_write_disjoint_shards_that_form_one_dataset(videos, tmp_path):
  entries = [_scene(i, cut_frames=CUTS) for i in range(5)]
  entries.insert(2, _scene(9, "corrupt.mp4"))
  entries.append(_scene(6, shots=SHOTS[:1]))
  scenes = _write_manifest(videos, "hosts.jsonl", entries)  # 7 lines: 4 shards of 2
  out = tmp_path / "data"
  first = preprocess.main(_toy(scenes, out, "--detector", "none", "--shard_size", "2",
                                "--host", "0", "--num_hosts", "2"))  # fmt: skip
  assert first["shards"] == 2 and first["dataset"].startswith("incomplete")
  with pytest.raises(FileNotFoundError, match="preprocessing has not finished"):
    dataset.open_source(out)
  second = preprocess.main(_toy(scenes, out, "--detector", "none", "--shard_size", "2",
                                 "--host", "1", "--num_hosts", "2"))  # fmt: skip
  assert second["dataset"]["written"] == 6 and second["dataset"]["skipped"] == {"corrupt": 1}
  records = _records(out)
  assert sorted(records) == [0, 1, 2, 3]
  assert [r["lines"] for _, r in sorted(records.items())] == [[1, 2], [4], [5, 6], [7]]
  assert first["written"] + second["written"] == 6  # host 0: shards 0 and 2; host 1: 1 and 3
  assert (first["written"], first["skipped"]) == (4, {}) and second["skipped"] == {"corrupt": 1}

  source, shapes = dataset.open_source(out)
  captions = [_caption(source[i]) for i in range(len(source))]
  assert captions == [f"Scene {i}." for i in (0, 1, 2, 3, 4, 6)]
  config = tiny.get_config("batch=2")
  config.data.update(source="tfds", data_dir=str(out), max_shot_frames=0)
  batch = next(iter(pipeline.from_config(source, shapes, config, (0, 2))))
  assert batch["latents"].shape == (2, 9, 4, 6, 4) and batch["context"].shape == (2, 32, 24)

  again = preprocess.main(_toy(scenes, out, "--detector", "none", "--shard_size", "2",
                                "--host", "0", "--num_hosts", "2"))  # fmt: skip
  assert again["written"] == 4 and again["dataset"]["written"] == 6  # nothing rewritten
  with pytest.raises(ValueError, match=r"other settings \(fps: 8.0 -> 4.0\)"):
    preprocess.main(_toy(scenes, out, "--detector", "none", "--shard_size", "2", "--fps", "4"))


def test_given_cuts_are_checked_against_detection(videos, tmp_path):
  entries = [
    _scene(0, cut_frames=[5, 29]),  # 29 is 8 frames from the detected 21
    _scene(1, cut_times=[1.1, 2.6]),  # frames 9 and 21 at 8 fps
    _scene(2, shots=SHOTS[:2]),  # no cuts given: the detector's two are one too many
  ]
  scenes = _write_manifest(videos, "given.jsonl", entries)
  spec = clips.ClipSpec(fps=FPS, height=32, width=48)
  detect = lambda frames: [9, 21]
  enc = encoders.toy(4, 24)
  kept = preprocess.run(scenes, str(tmp_path / "kept"), enc=enc, spec=spec, detect=detect,
                        settings={}, progress=False)  # fmt: skip
  assert kept["written"] == 2 and kept["cut_warnings"] == 1 and kept["skipped"] == {"cut_count": 1}
  (warning,) = _records(tmp_path / "kept")[0]["warnings"]
  assert warning == dict(
    line=1, message="cuts 29 (detected 21) are more than 4 frames from detection"
  )
  source, _ = dataset.open_source(tmp_path / "kept")
  assert list(source[0]["latent_bounds"]) == [0, 2, 8, 9]  # the given cuts 5 and 29
  assert list(source[1]["latent_bounds"]) == [0, 3, 6, 9]  # cut times 1.1 s, 2.6 s
  spec = clips.ClipSpec(fps=FPS, height=32, width=48, drop_cut_mismatch=True)
  dropped = preprocess.run(scenes, str(tmp_path / "dropped"), enc=enc, spec=spec, detect=detect,
                           settings={}, progress=False)  # fmt: skip
  assert dropped["written"] == 1 and dropped["skipped"] == {"cut_count": 1, "cut_mismatch": 1}
