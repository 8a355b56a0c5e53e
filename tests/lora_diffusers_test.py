"""LoRA parity with diffusers (fp32, tiny Wan DiT), both ways: a LoRA we write, loaded by
diffusers onto the same base, gives our forward with the adapters; a LoRA in diffusers/peft,
original (ComfyUI) or musubi-tuner names, merged by our `--lora` path, gives diffusers' forward
after `load_lora_weights` at scale 1 and 0.5. Then `sample --lora` end to end on a converted
folder, `convert --lora`, and `export` of a LoRA training workdir (LoRA files, --merge)."""

import dataclasses
import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel

from configs import tiny
from holocine_jax import convert, export, sample, sharding
from holocine_jax.model import lora
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT
from holocine_jax.training import loop
from holocine_jax.weights import diffusers_dit, formats, keymap, lora_files, store
from tests import lora_reference, support
from tests import wan_reference as ref

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs/tiny.py")
CONFIG = DiTConfig.from_config(tiny.get_config("window=false").model)
R, ALPHA = 4, 8.0
MESH, RULES = sharding.make_mesh({"fsdp": -1}), sharding.DEFAULT_LOGICAL_RULES


@functools.partial(jax.jit, static_argnums=0)
def _forward(config, params, x, t, ctx):
  return WanDiT(config).apply({"params": params}, x, t, ctx)


def _inputs():
  return support.dit_inputs((2, 3, 4, 6, 4), 8)


def _base(torch_model):
  target, _ = formats.abstract("dit", CONFIG)
  return keymap.convert(ref.state_dict(torch_model), diffusers_dit.RULES, target)


def _diffusers(torch_model, path, scale=1.0):
  """diffusers' forward with the LoRA file loaded as WanPipeline.load_lora_weights does."""
  pipe = WanPipeline(
    tokenizer=None, text_encoder=None, transformer=torch_model, vae=None, scheduler=None
  )
  pipe.load_lora_weights(path, adapter_name="lora")
  pipe.set_adapters(["lora"], [scale])
  try:
    return ref.run(torch_model, *_inputs())
  finally:
    pipe.delete_adapters("lora")


def _merged_reference(params, adapters, alpha, scale=1.0):
  """numpy W + scale (alpha / r) A B for every adapted kernel [layers, *in, *out]."""
  flat = {k: np.array(v) for k, v in _flat(params).items()}
  for module, leaves in _modules(adapters).items():
    a, b = leaves["lora_a"], leaves["lora_b"]
    r = a.shape[-1]
    kernel = flat[f"blocks/{module}/kernel"]
    a2, b2 = a.reshape(a.shape[0], -1, r), b.reshape(b.shape[0], r, -1)
    delta = np.einsum("lir,lro->lio", a2, b2).reshape(kernel.shape)
    flat[f"blocks/{module}/kernel"] = kernel + scale * alpha / r * delta
  return _unflat(flat)


def _flat(tree):
  from flax import traverse_util

  return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def _unflat(flat):
  from flax import traverse_util

  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def _modules(adapters):
  out = {}
  for path, value in _flat(adapters["blocks"]).items():
    module, leaf = path.rsplit("/", 1)
    out.setdefault(module, {})[leaf] = value
  return out


def _random_adapters(seed=1):
  """Nonzero adapters for every block Linear of CONFIG, in our layout."""
  rng = np.random.RandomState(seed)
  flat = {}
  for module, (in_dims, out_dims) in lora_files._linears(lora_files._shapes(CONFIG)).items():
    flat[f"{module}/lora_a"] = 0.3 * rng.randn(CONFIG.num_layers, *in_dims, R).astype(np.float32)
    flat[f"{module}/lora_b"] = 0.3 * rng.randn(CONFIG.num_layers, R, *out_dims).astype(np.float32)
  return {"blocks": _unflat(flat)}


def _bf16_exact(seed):
  """A tiny torch Wan DiT whose weights are bfloat16 values (what our LoRA base stores)."""
  model = ref.tiny_wan(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(p.bfloat16().float())
  return model


@pytest.mark.parametrize("fmt", lora_files.FORMATS)
def test_diffusers_loads_the_lora_we_write(tmp_path, fmt):
  torch_model = _bf16_exact(0)
  adapters = _random_adapters()
  path = str(tmp_path / f"high_noise_lora_{fmt}.safetensors")
  lora_files.write(path, adapters, fmt, alpha=ALPHA)
  params, base = _base(torch_model), ref.run(torch_model, *_inputs())
  want = _diffusers(torch_model, path)
  # ours: the LoRA model (bfloat16 base, fp32 adapters and compute) with the adapters unmerged
  config = dataclasses.replace(CONFIG, lora_rank=R, lora_alpha=ALPHA)
  frozen = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  ours = _forward(config, lora.merge(frozen, adapters), *_inputs())
  assert support.rel_err(base, want) > 0.05  # the LoRA changes the output
  assert support.rel_err(ours, want) < 1e-5, support.rel_err(ours, want)
  if fmt == "diffusers":  # the model-level entry point reads our peft names too
    torch_model.load_lora_adapter(path, adapter_name="again")
    torch_model.set_adapters(["again"], [1.0])
    assert support.rel_err(ours, ref.run(torch_model, *_inputs())) < 1e-5


@pytest.mark.parametrize(
  "naming",
  ["diffusers", "wan", "musubi", "wan+bias", "diffusers+bias", "wan+outside", "diffusers+outside"],
)
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_our_lora_path_matches_diffusers(tmp_path, naming, scale):
  torch_model = ref.tiny_wan(0)
  lora = lora_reference.torch_lora(alpha=ALPHA, seed=2)
  lora = {k: (0.3 * down, 0.3 * up, alpha) for k, (down, up, alpha) in lora.items()}
  naming, *flags = naming.split("+")  # bias deltas (diff_b / lora_B.bias); head, time LoRAs
  flags = {flag: True for flag in flags}
  path = lora_reference.save(tmp_path / "l.safetensors", lora, naming, **flags)
  params, base = jax.device_put(_base(torch_model)), ref.run(torch_model, *_inputs())
  want = _diffusers(torch_model, path, scale)
  loaded = lora_files.load([lora_files.parse(f"{path}:{scale}")], CONFIG)
  merged = lora_files.apply(params, loaded, CONFIG, "high")
  err = support.rel_err(_forward(CONFIG, merged, *_inputs()), want)
  assert support.rel_err(base, want) > 0.05
  assert err < 1e-5, err


# ---------------------------------------------------------------------------------------------
# `convert --lora` and `sample --lora` on a converted folder.


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """(diffusers source folder with two tiny experts, its conversion without LoRA)."""
  root = tmp_path_factory.mktemp("src")
  ref.tiny_wan(0).save_pretrained(str(root / "transformer"))
  ref.tiny_wan(1).save_pretrained(str(root / "transformer_2"))
  out = str(root / "converted")
  convert.main(["--src", str(root), "--config", TINY, "--out", out, "--no_progress"])
  return str(root), out


@pytest.fixture(scope="module")
def lora_path(tmp_path_factory):
  lora = lora_reference.torch_lora(alpha=ALPHA, seed=3)
  return lora_reference.save(tmp_path_factory.mktemp("lora") / "l.safetensors", lora, "wan")


def _load(out, name):
  return jax.device_get(store.load(out, name, MESH, RULES))


def test_convert_merges_the_lora(folders, lora_path, tmp_path, capsys):
  root, plain = folders
  out = str(tmp_path / "merged")
  argv = ["--src", root, "--config", TINY, "--no_progress", "--out"]
  record = convert.main([*argv, out, "--lora", f"high={lora_path}:0.5"])
  lora = lora_files.read(lora_path, CONFIG)
  want = _merged_reference(_load(plain, "high"), lora.adapters, lora.alpha, 0.5)
  close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-6)
  jax.tree.map(close, _load(out, "high"), want)
  jax.tree.map(np.testing.assert_array_equal, _load(out, "low"), _load(plain, "low"))
  assert record["components"]["high"]["lora"] == [
    dict(sha256=lora.sha256, scale=0.5, experts=["high"])
  ]
  assert "lora" not in record["components"]["low"]
  for bad, match in (
    (f"{lora_path}:x", "scale after ':'"),
    ("/nonexistent.safetensors", "no file"),
  ):
    with pytest.raises(SystemExit):
      convert.main([*argv, str(tmp_path / "bad"), "--lora", bad])
    assert not os.path.exists(tmp_path / "bad")
    assert re.search(f"error: --lora .*{match}", capsys.readouterr().err)


@pytest.mark.slow
def test_sample_with_lora_end_to_end(folders, lora_path, tmp_path, capsys):
  _, out = folders
  scenes = tmp_path / "scenes.jsonl"
  scene = dict(id="one", global_caption="Shapes.", shot_captions=["a disc", "a box"], num_frames=5)
  scenes.write_text(json.dumps(scene) + "\n")
  videos = str(tmp_path / "videos")
  argv = ["--config", TINY, "--checkpoint", out, "--scenes", str(scenes), "--no_progress",
          "--set", "sampler.num_steps=2", "--out"]  # fmt: skip
  report = sample.main([*argv, videos, "--lora", f"{lora_path}:0.5"])
  assert report.done == ["one"] and report.exit_code == 0
  with open(os.path.join(videos, "one.json")) as f:
    weights = json.load(f)["setup"]["weights"]
  digest = lora_files.sha256(lora_path)
  assert weights["lora"] == [dict(sha256=digest, scale=0.5, experts=["high", "low"])]
  again = sample.main([*argv, videos, "--lora", f"{lora_path}:0.5"])
  assert again.skipped == ["one"]
  changed = sample.main([*argv, videos, "--lora", f"{lora_path}:1"])  # another scale: regenerated
  assert changed.done == ["one"] and "one" in changed.changed
  for bad, match in (
    (f"{lora_path}:nan", "must be finite"),
    (f"low={lora_path}:two", "scale after ':'"),
    (str(scenes), "corrupt safetensors header"),
  ):
    with pytest.raises(SystemExit):
      sample.main([*argv, str(tmp_path / "bad"), "--lora", bad])
    assert not os.path.exists(tmp_path / "bad")
    assert re.search(f"error: --lora .*{match}", capsys.readouterr().err)


@pytest.mark.slow
def test_one_expert_lora_splits_a_shared_tree(lora_path):
  """A random init serves every step as one tree; a LoRA for the high expert only splits it in
  two: the low tree stays the init, the high one gets the LoRA."""
  config = tiny.get_config("")
  model = WanDiT(DiTConfig.from_config(config.model))
  loaded = lora_files.load([lora_files.parse(f"high={lora_path}")], model.config)
  high, low = sample._experts(model, config, None, True, MESH, RULES, loaded)
  assert low is not None
  lora = loaded[0][1]
  want = _merged_reference(jax.device_get(low["params"]), lora.adapters, lora.alpha)
  close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-6)
  jax.tree.map(close, jax.device_get(high["params"]), want)


@pytest.mark.slow
def test_export_a_lora_workdir(folders, tmp_path):
  """A LoRA run from the converted folder exports its adapters as LoRA files (both experts for
  train.expert=all) that read back exactly, or with --merge the merged experts."""
  _, converted = folders
  config = tiny.get_config("lora=4,steps=1,ckpt_every=1,window=false")
  config.data.frame_choices = (17,)
  config.train.progress_bar = config.train.tensorboard = False
  config.train.init_from, config.train.init_expert = converted, "high"
  config.train.warmup_steps = 0
  workdir = str(tmp_path / "w")
  adapters = jax.device_get(loop.train(config, workdir).state.params["params"])
  with open(os.path.join(workdir, "config.json"), "w") as f:  # as the train CLI writes it
    json.dump(json.loads(config.to_json_best_effort()), f)
  assert np.abs(adapters["blocks"]["ffn_out"]["lora_b"]).max() > 0  # trained: B left zero
  for fmt in lora_files.FORMATS:
    out = str(tmp_path / fmt)
    record = export.main(["--checkpoint", workdir, "--format", fmt, "--out", out])
    assert sorted(os.listdir(out)) == sorted(
      [export.RECORD, *map(export.lora_file, ("high", "low"))]
    )
    assert record["config"]["lora_rank"] == 4
    for name in ("high", "low"):
      got = lora_files.read(os.path.join(out, export.lora_file(name)), CONFIG)
      assert (got.naming, got.rank, got.alpha) == (fmt, 4, 4.0)
      jax.tree.map(np.testing.assert_array_equal, got.adapters, adapters)
  merged = str(tmp_path / "merged")
  record = export.main(
    ["--checkpoint", workdir, "--format", "diffusers", "--merge", "--out", merged]
  )
  assert record["merge"] and record["config"]["lora_rank"] == 0
  source = store.source(workdir)
  want = jax.device_get(source.load(source.experts[0], MESH, RULES))
  state = ref.state_dict(WanTransformer3DModel.from_pretrained(merged, subfolder="transformer"))
  target, _ = formats.abstract("dit", source.config)
  got = keymap.convert(state, diffusers_dit.RULES, target)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  with pytest.raises(ValueError, match="LoRA files are written in diffusers or wan names"):
    export.export(workdir, str(tmp_path / "h"), fmt="holocine")
  with pytest.raises(ValueError, match="--merge is for LoRA training workdirs"):
    export.export(converted, str(tmp_path / "h"), fmt="diffusers", merge=True)
  assert not os.path.exists(tmp_path / "h")
