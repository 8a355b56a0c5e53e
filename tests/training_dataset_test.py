"""tfds ArrayRecord builder + preprocessing (stand-in encoders) read back through grain."""

import functools
import json

import jax
import numpy as np
import pytest
from flax.core import meta

from configs import tiny
from holocine_jax import scene as scene_lib
from holocine_jax.training import dataset, pipeline, preprocess


def _write_scenes(tmp_path, num=10):
  rng = np.random.default_rng(0)
  lines = []
  for i in range(num):
    frames = (17, 20)[i % 2]  # 20 frames snap down to 17
    video = rng.integers(0, 256, (frames, 32, 48, 3), dtype=np.uint8)
    np.save(tmp_path / f"clip{i}.npy", video)
    shots = ["a red disc moving left", "a blue bar standing still", "a green square"][: 1 + i % 3]
    entry = dict(video=f"clip{i}.npy", global_caption=f"Scene {i}.", shot_captions=shots)
    if i == 4:
      entry["cut_frames"] = [5]
    lines.append(json.dumps(entry))
  (tmp_path / "scenes.jsonl").write_text("\n".join(lines) + "\n")
  return tmp_path / "scenes.jsonl"


def test_preprocess_writes_array_records_that_grain_reads(tmp_path):
  scenes = _write_scenes(tmp_path)
  out = tmp_path / "data"
  preprocess.main(
    ["--scenes", str(scenes), "--out", str(out), "--latent_channels", "4", "--text_dim", "24"]
  )
  source, shapes = dataset.open_source(out, "train")
  assert len(source) == 10 and shapes == [(5, 4, 6)] * 10
  encoders = preprocess.toy_encoders(4, 24)
  entries = preprocess.read_scenes(scenes)
  for i in (0, 4, 5):
    record, want = source[i], preprocess.encode_example(entries[i], encoders)
    assert record["latents"].shape == want["latents"].shape == (5, 4, 6, 4)
    np.testing.assert_allclose(record["latents"].astype(np.float32), want["latents"], atol=2e-3)
    np.testing.assert_allclose(record["context"].astype(np.float32), want["context"], atol=3e-3)
    np.testing.assert_array_equal(record["latent_bounds"], want["latent_bounds"])
    np.testing.assert_array_equal(record["text_ranges"], want["text_ranges"])
  assert list(source[4]["latent_bounds"]) == [0, 2, 5]  # cut at frame 5 -> latent frame 2

  config = tiny.get_config("batch=4")
  config.data.update(source="tfds", data_dir=str(out))
  batches = iter(pipeline.from_config(source, shapes, config, (0, 4)))
  batch = next(batches)
  assert batch["latents"].shape == (4, 5, 4, 6, 4) and batch["context"].shape == (4, 32, 24)


def test_preprocess_rejects_bad_videos_and_shot_mismatch(tmp_path):
  np.save(tmp_path / "bad.npy", np.zeros((9, 16, 16, 3), np.float32))
  encoders = preprocess.toy_encoders(4, 24)
  entry = dict(video=str(tmp_path / "bad.npy"), global_caption="g", shot_captions=["a"])
  with pytest.raises(ValueError, match="uint8"):
    preprocess.encode_example(entry, encoders)
  np.save(tmp_path / "ok.npy", np.zeros((9, 16, 16, 3), np.uint8))
  entry["video"] = str(tmp_path / "ok.npy")
  one_shot_text = preprocess.Encoders(
    encoders.video, lambda s: encoders.text(scene_lib.Scene.create("g", ["a"], 9))
  )
  with pytest.raises(ValueError, match="text windows name 1 shots, scene has 2"):
    preprocess.encode_example(dict(entry, shot_captions=["a", "b"]), one_shot_text)


def test_model_encoders_wire_the_vae_and_umt5(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  from holocine_jax import sharding, text
  from holocine_jax.model import umt5, vae

  words = "[global caption] A scene. This scene contains 2 shots. [per shot caption] a red disc"
  (tmp_path / "corpus.txt").write_text("\n".join([words, "[shot cut] a blue bar"] * 50))
  spm.SentencePieceTrainer.train(
    input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "sp"), vocab_size=60,
    pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
  )  # fmt: skip
  tok = text.Tokenizer.from_path(tmp_path / "sp.model")
  t5 = umt5.UMT5Config(vocab_size=64, d_model=16, d_kv=4, num_heads=4, d_ff=32, num_layers=1,
                       param_dtype="float32", dtype="float32")  # fmt: skip
  mesh = sharding.make_mesh({"data": -1})
  rules = sharding.DEFAULT_LOGICAL_RULES
  params, shardings = umt5.init_params(t5, mesh, rules, jax.random.key(0))
  prompts = text.PromptEncoder(tok, t5, params, mesh, rules, text_len=128, shardings=shardings)
  vae_config = vae.VAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
                             latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)  # fmt: skip
  abstract = jax.eval_shape(
    functools.partial(vae.init_params, config=vae_config), jax.random.key(1)
  )
  rng = np.random.default_rng(1)  # random weights without compiling the VAE's init
  vae_params = jax.tree.map(
    lambda a: (0.2 * rng.standard_normal(a.shape)).astype(a.dtype), meta.unbox(abstract)
  )
  fast = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
  encoders = preprocess.model_encoders(prompts, vae_params, vae_config, compiler_options=fast)
  np.save(tmp_path / "v.npy", np.random.default_rng(0).integers(0, 256, (9, 16, 24, 3), np.uint8))
  entry = dict(video=str(tmp_path / "v.npy"), global_caption="A scene.",
               shot_captions=["a red disc", "a blue bar"], cut_frames=[5])  # fmt: skip
  record = preprocess.encode_example(entry, encoders)
  assert record["latents"].shape == (3, 2, 3, 4)
  assert record["context"].shape[1] == 16 and 0 < record["context"].shape[0] < 128
  assert record["text_ranges"].shape == (3, 2) and list(record["latent_bounds"]) == [0, 2, 3]
