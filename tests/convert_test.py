"""Weight conversion: tiny torch models saved in each layout -> CLI -> orbax -> load, outputs vs
torch; sharded loading; lazy slicing; every error from a deliberately broken checkpoint."""

import dataclasses
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from holocine_jax import config_file, convert, export, sample, sharding
from holocine_jax.model import umt5, vae
from holocine_jax.model.dit import WanDiT
from holocine_jax.weights import diffusers_dit, formats, keymap, loader, reader, store
from tests import wan_reference as ref
from tests.support import (
  CONFIG,
  FAST_COMPILE,
  MEAN,
  STD,
  T5,
  VAE,
  original_dit,
  save_sharded,
  state_dict,
  t5_model,
  to_wan_names,
  vae_model,
)

RULES = sharding.DEFAULT_LOGICAL_RULES

# ---------------------------------------------------------------------------------------------
# Tiny torch models and the three on-disk layouts.


@pytest.fixture(scope="module")
def models():
  return dict(high=ref.tiny_wan(0), low=ref.tiny_wan(1), text_encoder=t5_model(), vae=vae_model())


def _wan_t5(model):
  """transformers umT5 -> Wan's own T5 names (models_t5_umt5-xxl-enc-bf16.pth)."""
  return to_wan_names(state_dict(model), T5["num_layers"])


_VAE_RES = {
  "norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
  "conv2": "residual.6", "conv_shortcut": "shortcut",
}  # fmt: skip


def _original_vae_name(key: str) -> str:
  """diffusers AutoencoderKLWan name -> Wan2.1_VAE.pth name (diffusers' conversion, inverted)."""
  for a, b in (("quant_conv", "conv1"), ("post_quant_conv", "conv2")):
    if key.startswith(a + "."):
      return b + key[len(a) :]
  part, rest = key.split(".", 1)
  for a, b in (("conv_in", "conv1"), ("conv_out", "head.2"), ("norm_out.gamma", "head.0.gamma")):
    rest = b + rest[len(a) :] if rest.startswith(a) else rest
  rest = rest.replace("mid_block.attentions.0", "middle.1")
  rest = rest.replace("mid_block.resnets.0", "middle.0").replace("mid_block.resnets.1", "middle.2")
  rest = rest.replace("down_blocks", "downsamples")
  per_level = VAE["num_res_blocks"] + 2
  parts = rest.split(".")
  if parts[0] == "up_blocks":
    i = int(parts[1])
    if parts[2] == "resnets":
      parts = ["upsamples", str(i * per_level + int(parts[3]))] + parts[4:]
    else:  # upsamplers.0
      parts = ["upsamples", str(i * per_level + per_level - 1)] + parts[4:]
  rest = ".".join(parts)
  for a, b in _VAE_RES.items():
    rest = rest.replace(f".{a}", f".{b}")
  return f"{part}.{rest}"


def _write(fmt, root, models):
  if fmt == "diffusers":
    models["high"].save_pretrained(os.path.join(root, "transformer"), max_shard_size="40KB")
    models["low"].save_pretrained(os.path.join(root, "transformer_2"))
    models["text_encoder"].save_pretrained(os.path.join(root, "text_encoder"))
    models["vae"].save_pretrained(os.path.join(root, "vae"))
    return
  wan_dir = root if fmt == "wan" else os.path.join(root, "Wan2.2-T2V-A14B")
  os.makedirs(wan_dir, exist_ok=True)
  torch.save(
    _wan_t5(models["text_encoder"]), os.path.join(wan_dir, "models_t5_umt5-xxl-enc-bf16.pth")
  )
  vae_state = {_original_vae_name(k): v for k, v in state_dict(models["vae"]).items()}
  torch.save(vae_state, os.path.join(wan_dir, "Wan2.1_VAE.pth"))
  if fmt == "wan":
    for name in ("high", "low"):
      folder = os.path.join(root, f"{name}_noise_model")
      save_sharded(original_dit(models[name]), folder, "diffusion_pytorch_model")
  else:
    folder = os.path.join(root, "HoloCine_dit", "full")
    os.makedirs(folder)
    for name in ("high", "low"):
      save_file(original_dit(models[name]), os.path.join(folder, f"full_{name}_noise.safetensors"))


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("config") / "convert_tiny.py"
  path.write_text(CONFIG)
  return str(path)


_CONVERTED = {}


@pytest.fixture(scope="module")
def converted(models, config_path, tmp_path_factory):
  """fmt -> (source root, converted dir, CLI record), converted once per module."""

  def get(fmt):
    if fmt not in _CONVERTED:
      root = str(tmp_path_factory.mktemp(fmt))
      _write(fmt, root, models)
      out = os.path.join(root, "converted")
      argv = ["--src", root, "--config", config_path, "--out", out, "--no_progress"]
      if fmt == "holocine":  # its T5 / VAE files are Wan's, as in the wan layout: save time
        argv += ["--components", "high,low"]
      record = convert.main(argv)
      _CONVERTED[fmt] = root, out, record
    return _CONVERTED[fmt]

  return get


@pytest.fixture(scope="module")
def mesh8():
  return sharding.make_mesh({"fsdp": -1})


# ---------------------------------------------------------------------------------------------
# Round trips: outputs of the loaded params vs torch (fp32).


@functools.partial(jax.jit, static_argnums=0)
def _dit_apply(config, params, x, t, ctx):
  return WanDiT(config).apply({"params": params}, x, t, ctx)


_encode = jax.jit(umt5.encode, static_argnames="config")


def _check_dit(out, name, torch_model, mesh):
  kind, config = store.component_config(out, name)
  assert kind == "dit" and config.scan_layers
  config = dataclasses.replace(config, window_cross_attention=False)
  params = store.load(out, name, mesh, RULES)
  rng = np.random.RandomState(0)
  x = rng.randn(1, 3, 4, 4, 4).astype(np.float32)
  t, ctx = np.array([700.0], np.float32), rng.randn(1, 8, 24).astype(np.float32)
  got = np.asarray(_dit_apply(config, params, x, t, ctx))
  want = ref.run(torch_model, x, t, ctx)
  return float(np.abs(got - want).max() / np.abs(want).max())


def _check_t5(out, torch_model, mesh):
  kind, config = store.component_config(out, "text_encoder")
  params = store.load(out, "text_encoder", mesh, RULES)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 128, (2, 24)).astype(np.int32)
  mask = np.arange(24)[None] < np.array([[24], [13]])
  got = np.asarray(_encode(params, ids, mask, config=config))
  ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask.astype(int))
  with torch.no_grad():
    want = torch_model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state.numpy()
  want = want * mask[..., None]
  return float(np.abs(got - want).max() / np.abs(want).max())


_decode = jax.jit(vae.decode, static_argnums=2, compiler_options=FAST_COMPILE)


def _check_vae(out, torch_model, mesh):
  kind, config = store.component_config(out, "vae")
  params = store.load(out, "vae", mesh, RULES)
  z = np.random.RandomState(0).randn(1, 1, 2, 2, 4).astype(np.float32)
  got = np.asarray(_decode(params, jnp.asarray(z), config))
  zz = z * np.asarray(STD, np.float32) + np.asarray(MEAN, np.float32)
  with torch.no_grad():
    want = torch_model.decode(torch.from_numpy(zz.transpose(0, 4, 1, 2, 3).copy())).sample
  want = want.numpy().transpose(0, 2, 3, 4, 1)
  return float(np.abs(got - want).max())


@pytest.mark.parametrize("fmt", ["diffusers", "wan", "holocine"])
def test_round_trip(fmt, converted, models, mesh8):
  root, out, record = converted(fmt)
  assert record["format"] == fmt
  names = ["high", "low"] + ([] if fmt == "holocine" else ["text_encoder", "vae"])
  assert sorted(record["components"]) == names
  assert store.info(out) == record and not os.path.exists(out + ".partial")
  dit, t5, vae_naming = ("wan_dit", "wan_t5", "wan_vae")
  if fmt == "diffusers":
    dit, t5, vae_naming = ("diffusers_dit", "transformers_umt5", "diffusers_vae")
  want = dict(high=dit, low=dit, text_encoder=t5, vae=vae_naming)
  assert {n: c["naming"] for n, c in record["components"].items()} == {n: want[n] for n in names}
  assert record["components"]["high"]["num_params"] == sum(
    p.numel() for p in models["high"].parameters()
  )
  errors = {name: _check_dit(out, name, models[name], mesh8) for name in ("high", "low")}
  if fmt != "holocine":
    errors["text_encoder"] = _check_t5(out, models["text_encoder"], mesh8)
    errors["vae"] = _check_vae(out, models["vae"], mesh8)
  print(fmt, errors)
  # measured, every format alike: DiT 4e-7 / 1.0e-6 relative (high / low), umT5 4.2e-6
  # relative, VAE decode 1.7e-6 absolute (outputs O(1))
  assert all(err < 1e-5 for err in errors.values()), errors
  # the low expert really is the other model
  assert _check_dit(out, "low", models["high"], mesh8) > 1e-2


def test_sample_from_a_converted_folder(converted, config_path, tmp_path):
  """The sampler restores both experts and the VAE decoder of a converted folder (toy text:
  tiny's DiT takes 24-dim context, the converted umT5 gives 32)."""
  _, out, record = converted("diffusers")
  scenes = tmp_path / "scenes.jsonl"
  scene = dict(id="one", global_caption="Shapes.", shot_captions=["a disc", "a box"], num_frames=9)
  scenes.write_text(json.dumps(scene) + "\n")
  argv = ["--config", config_path, "--checkpoint", out, "--scenes", str(scenes), "--out",
          str(tmp_path / "videos"), "--no_progress", "--set", "sampler.num_steps=2",
          "--set", "sample.decoder=vae"]  # fmt: skip
  report = sample.main(argv)
  assert report.done == ["one"] and report.exit_code == 0
  with open(tmp_path / "videos" / "one.json") as f:
    weights = json.load(f)["setup"]["weights"]
  assert sorted(weights["converted"]["components"]) == sorted(record["components"])
  with pytest.raises(ValueError, match="--step is for training workdirs; .* is a converted folder"):
    sample.main([*argv, "--step", "1"])
  config = config_file.load(config_path, ["model.num_layers=3"])
  with pytest.raises(ValueError, match=r"/high has model.num_layers=2 \(config: 3\); sample with"):
    sample.open_checkpoint(config, out, None)


# ---------------------------------------------------------------------------------------------
# Sharding, lazy slices, dtypes.


def test_sharded_load_equals_single_device(converted, mesh8):
  root, out, _ = converted("diffusers")
  one = sharding.make_mesh({"fsdp": -1}, devices=jax.devices()[:1])
  many, single = store.load(out, "high", mesh8, RULES), store.load(out, "high", one, RULES)
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), many, single
  )
  q = many["blocks"]["self_attn"]["q"]["kernel"]  # [layers, embed (fsdp), heads, head_dim]
  assert q.shape == (2, 32, 2, 16) and len(q.sharding.device_set) == 8
  assert {s.data.shape for s in q.addressable_shards} == {(2, 4, 2, 16)}
  assert len({s.device for s in q.addressable_shards}) == 8
  assert single["blocks"]["self_attn"]["q"]["kernel"].addressable_shards[0].data.shape == q.shape
  # straight from the PyTorch files, no orbax: the same arrays in the same shardings
  _, config = store.component_config(out, "high")
  component = formats.find_components(root, "diffusers")[1][0]
  direct = loader.load_component(component, config, mesh8, RULES)
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), direct, many
  )
  assert direct["blocks"]["self_attn"]["q"]["kernel"].sharding == q.sharding


@pytest.mark.parametrize(
  ("transform", "src_shape", "shape"),
  [
    ("linear", (12, 8), (8, 3, 4)),  # q/k/v: [H*K, D] -> [D, H, K]
    ("linear", (6, 12), (3, 4, 6)),  # o: [D, H*K] -> [H, K, D]
    ("conv", (6, 4, 1, 2, 2), (16, 6)),  # patch embedding -> [pt*ph*pw*C, D]
    ("conv", (6, 4, 3, 3, 3), (3, 3, 3, 4, 6)),  # causal conv3d
    ("conv", (9, 3, 1, 1), (3, 9)),  # 1x1 conv2d -> matrix
    ("reshape", (5, 1, 1, 1), (5,)),  # RMS norm gamma
    ("reshape", (1, 6, 4), (6, 4)),  # modulation table
  ],
)
def test_read_slices_match_full_transform(transform, src_shape, shape):
  rng = np.random.default_rng(0)
  w = rng.normal(size=src_shape).astype(np.float32)
  full = keymap.TRANSFORMS[transform](w).reshape(shape)
  for _ in range(20):
    starts = [int(rng.integers(0, n)) for n in shape]
    index = tuple(
      slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(starts, shape, strict=True)
    )
    got = keymap.read(w, transform, shape, index, np.float32)
    np.testing.assert_array_equal(got, full[index])


class _Spy:
  """A source tensor that records which slices are read from it."""

  def __init__(self, array, log):
    self.array, self.log = array, log
    self.shape, self.ndim = array.shape, array.ndim

  def __getitem__(self, index):
    out = self.array[index]
    self.log.append(out.size)
    return out


class _SpyCheckpoint(dict):
  def release(self, key):
    pass


def test_each_shard_reads_only_its_slice(models, mesh8):
  """Building a param under fsdp=8 reads 1/8 of each source tensor per device, and scanned
  params read each layer separately."""
  state = {k: v.numpy() for k, v in state_dict(models["high"]).items()}
  log = []
  checkpoint = _SpyCheckpoint({k: _Spy(v, log) for k, v in state.items()})
  config = formats.model_config("dit", config_file.load("configs/tiny.py"))
  shapes, specs = formats.abstract("dit", config)
  plan = keymap.plan({k: v.shape for k, v in state.items()}, diffusers_dit.RULES, shapes)
  shardings = loader.param_shardings(specs, mesh8, RULES)
  params = dict(loader.iter_params(checkpoint, plan, shapes, shardings))
  q = params["blocks/self_attn/q/kernel"]
  np.testing.assert_array_equal(
    np.asarray(q)[1].reshape(32, 32), state["blocks.1.attn1.to_q.weight"].T
  )
  log.clear()
  loader.build_param(
    checkpoint,
    plan["blocks/self_attn/q/kernel"],
    shapes["blocks"]["self_attn"]["q"]["kernel"],
    q.sharding,
  )
  assert log == [32 * 32 // 8] * 16  # 8 devices x 2 layers, each 1/8 of a [32, 32] weight


def _write_wan(root, models, edit_low=None, t5_dtype=None):
  """A wan-layout folder: high/low experts (original names, sharded) and the T5 .pth."""
  for name in ("high", "low"):
    state = original_dit(models[name])
    if name == "low" and edit_low is not None:
      edit_low(state)
    save_sharded(state, os.path.join(root, f"{name}_noise_model"), "diffusion_pytorch_model")
  t5 = _wan_t5(models["text_encoder"])
  if t5_dtype is not None:
    t5 = {k: v.to(t5_dtype) for k, v in t5.items()}
  torch.save(t5, os.path.join(root, "models_t5_umt5-xxl-enc-bf16.pth"))
  return root


def _cli(root, config, *extra):
  out = os.path.join(root, "out")
  argv = ["--src", root, "--config", config, "--out", out, "--no_progress", *extra]
  return out, lambda: convert.main(argv)


def test_bf16_pth_is_read_as_bf16(models, config_path, tmp_path, mesh8):
  root = _write_wan(str(tmp_path), models, t5_dtype=torch.bfloat16)
  args = ("--components", "text_encoder", "--param_dtype", "bfloat16")
  out, run = _cli(root, config_path, *args)
  record = run()
  assert record["components"]["text_encoder"]["dtype"] == "bfloat16"
  params = store.load(out, "text_encoder", mesh8, RULES)
  table = params["token_embedding"]
  assert table.dtype == jnp.bfloat16
  want = models["text_encoder"].shared.weight.detach().to(torch.bfloat16).float().numpy()
  np.testing.assert_array_equal(np.asarray(table, np.float32), want)


# ---------------------------------------------------------------------------------------------
# Errors, each from a deliberately broken checkpoint.


@pytest.mark.parametrize(
  ("edit", "error", "match"),
  [
    (lambda s: s.pop("head.head.bias"), keymap.KeyMapError, r"missing parameters: \['head/bias'\]"),
    (
      lambda s: s.pop("blocks.1.ffn.2.weight"),
      keymap.KeyMapError,
      r"missing parameters: \['blocks/ffn_out/kernel layers \[1\]'\]",
    ),
    (
      lambda s: s.update({"blocks.0.extra.weight": torch.zeros(3)}),
      keymap.KeyMapError,
      r"unexpected checkpoint keys: \['blocks.0.extra.weight'\]",
    ),
    (
      lambda s: s.update({"blocks.0.self_attn.q.weight": torch.zeros(16, 32)}),
      keymap.KeyMapError,
      r"blocks.0.self_attn.q.weight -> blocks/self_attn/q/kernel: expected \(32, 2, 16\), got "
      r"\(16, 32\).*config .*convert_tiny.py",
    ),
  ],
)
def test_broken_expert_leaves_no_checkpoint(models, config_path, tmp_path, edit, error, match):
  """The high expert converts, the low one fails: nothing that looks complete is left."""
  root = _write_wan(str(tmp_path), models, edit_low=edit)
  out, run = _cli(root, config_path)
  with pytest.raises(error, match=match):
    run()
  assert not os.path.exists(out) and not os.path.exists(out + ".partial")
  assert sorted(os.listdir(root)) == sorted(
    ["high_noise_model", "low_noise_model", "models_t5_umt5-xxl-enc-bf16.pth"]
  )


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_integer_and_bool_weights_are_refused_naming_the_key(models, config_path, tmp_path, dtype):
  state = {k: v.to(dtype) if k.endswith("ffn.0.weight") else v for k, v in
           original_dit(models["high"]).items()}  # fmt: skip
  save_file(state, str(tmp_path / "full_high_noise.safetensors"))
  out, run = _cli(str(tmp_path), config_path)
  name = str(dtype).removeprefix("torch.")
  with pytest.raises(
    loader.WeightValueError,
    match=rf"must be floating point, but 2 checkpoint tensors are not: "
    rf"blocks.0.ffn.0.weight \({name}\), blocks.1.ffn.0.weight \({name}\)",
  ):
    run()
  assert not os.path.exists(out)


def test_nonfinite_weight_is_refused_unless_allowed(models, config_path, tmp_path):
  state = {k: v.to(torch.float16) for k, v in original_dit(models["high"]).items()}
  state["blocks.1.self_attn.k.weight"][3, 5] = float("nan")
  save_file(state, str(tmp_path / "full_high_noise.safetensors"))
  out, run = _cli(str(tmp_path), config_path)
  with pytest.raises(
    loader.WeightValueError,
    match=r"non-finite values .* in checkpoint tensors blocks.1.self_attn.k.weight \(1 of 128 ",
  ):
    run()
  assert not os.path.exists(out)
  record = _cli(str(tmp_path), config_path, "--allow_nonfinite")[1]()["components"]["high"]
  assert record["source_dtypes"] == {"float16": len(state)}  # saved as the config's float32
  assert record["dtype"] == "float32"


def test_shape_mismatch_names_the_config(models, tmp_path):
  root = _write_wan(str(tmp_path), models)
  _, run = _cli(root, "configs/tiny.py", "--components", "text_encoder")  # umT5-XXL default
  with pytest.raises(
    keymap.KeyMapError,
    match=r"token_embedding.weight -> token_embedding: expected \(256384, 4096\), got \(128, 32\)"
    r".*config configs/tiny.py",
  ):
    run()


def test_unknown_format(tmp_path, config_path):
  (tmp_path / "notes.txt").write_text("no weights here")
  with pytest.raises(formats.UnknownFormatError, match="could not detect the checkpoint format"):
    _cli(str(tmp_path), config_path)[1]()
  with pytest.raises(formats.UnknownFormatError, match="no diffusers checkpoint"):
    _cli(str(tmp_path), config_path, "--format", "diffusers")[1]()
  save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "full_high_noise.safetensors"))
  with pytest.raises(formats.UnknownFormatError, match="match no known dit naming"):
    _cli(str(tmp_path), config_path)[1]()


def test_unreadable_files(models, tmp_path, monkeypatch):
  root = _write_wan(str(tmp_path), models)
  shard = os.path.join(
    root, "high_noise_model", "diffusion_pytorch_model-00001-of-00002.safetensors"
  )
  with open(shard, "rb") as f:
    data = f.read()
  with open(shard, "wb") as f:
    f.write(data[:-100])
  with pytest.raises(reader.CheckpointReadError, match="truncated file: tensor .* ends at byte"):
    reader.Checkpoint([shard])
  with open(shard, "wb") as f:
    f.write((10**9).to_bytes(8, "little") + data[8:])
  with pytest.raises(reader.CheckpointReadError, match="corrupt safetensors header"):
    reader.Checkpoint([shard])
  with open(shard, "wb") as f:
    f.write(data[:8] + b"!" + data[9:])
  with pytest.raises(reader.CheckpointReadError, match="corrupt safetensors header"):
    reader.Checkpoint([shard])
  os.remove(shard)
  with pytest.raises(reader.CheckpointReadError, match="lists shards that are missing"):
    formats.find_components(root, "wan")
  pth = os.path.join(root, "models_t5_umt5-xxl-enc-bf16.pth")
  assert reader.Checkpoint([pth])["norm.weight"].shape == (32,)
  monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
  with pytest.raises(reader.CheckpointReadError, match="needs PyTorch: pip install torch"):
    reader.Checkpoint([pth])
  monkeypatch.undo()
  with open(pth, "r+b") as f:
    f.truncate(os.path.getsize(pth) // 2)
  with pytest.raises(reader.CheckpointReadError, match="cannot read .pth checkpoint"):
    reader.Checkpoint([pth])


# ---------------------------------------------------------------------------------------------
# The architecture read from the checkpoint; --config only adds what the files do not say.

_ARCH = dict(dim=32, num_layers=2, num_heads=2, ffn_dim=64, freq_dim=32, text_dim=24)


def _arch(out, name="high"):
  config = store.component_config(out, name)[1]
  return {k: getattr(config, k) for k in _ARCH}


def test_architecture_from_config_json_without_config(converted, models, tmp_path):
  """diffusers' and Wan's config.json give the heads (head_dim 16 here, not Wan's 128)."""
  root, _, _ = converted("diffusers")
  out = str(tmp_path / "d")
  record = convert.main(["--src", root, "--out", out, "--no_progress", "--components", "high,low"])
  assert record["config"] == convert.DEFAULT_CONFIG  # for what the files do not say
  assert record["components"]["high"]["architecture"] == "transformer/config.json and tensor shapes"
  assert _arch(out) == _arch(out, "low") == _ARCH
  root = _write_wan(str(tmp_path / "wan"), models)
  config = os.path.join(root, "high_noise_model", "config.json")
  with open(config, "w") as f:  # Wan's own config.json, as export writes it
    json.dump(export.wan_config(store.component_config(out, "high")[1]), f)
  args = ["--src", root, "--no_progress", "--components", "high", "--out"]
  record = convert.main([*args, str(tmp_path / "w")])
  assert record["components"]["high"]["architecture"] == (
    "high_noise_model/config.json and tensor shapes"
  )
  assert _arch(str(tmp_path / "w")) == _ARCH
  with open(config, "w") as f:
    json.dump(dict(_class_name="WanModel", dim=32, num_heads=2, num_layers=3), f)
  with pytest.raises(
    keymap.KeyMapError,
    match=r"^high_noise_model/config.json disagrees with the tensor shapes beside it: num_layers "
    r"3 vs 2 \(config.json vs shapes\)$",
  ):
    convert.main([*args, str(tmp_path / "bad")])


def test_architecture_from_shapes_assumes_wan_head_dim(models, tmp_path, mesh8):
  wide = ref.tiny_wan(2, num_attention_heads=2, attention_head_dim=128)  # dim 256
  save_file(original_dit(wide), str(tmp_path / "full_high_noise.safetensors"))
  out = str(tmp_path / "out")
  record = convert.main(["--src", str(tmp_path), "--out", out, "--no_progress"])
  entry = record["components"]["high"]
  assert entry["architecture"] == "tensor shapes, num_heads = dim / 128 (Wan's head_dim)"
  assert _arch(out) == dict(_ARCH, dim=256, num_heads=2)
  # the default config computes in bf16: measured 6.6e-3 relative (wrong heads: O(1))
  assert _check_dit(out, "high", wide, mesh8) < 3e-2
  # dim 32 is no multiple of 128: the heads must come from a --config
  save_file(original_dit(models["high"]), str(tmp_path / "full_high_noise.safetensors"))
  with pytest.raises(convert.ArchitectureError, match="dim 32 is not a multiple of Wan's head_dim"):
    convert.convert(str(tmp_path), str(tmp_path / "none"), progress=False)


def test_mismatched_config_is_one_line_naming_the_config_that_fits(converted, tmp_path, capsys):
  root, _, _ = converted("diffusers")
  out = str(tmp_path / "out")
  argv = ["--src", root, "--out", out, "--config", "configs/wan22_t2v_a14b.py", "--no_progress"]
  capsys.readouterr()  # the fixture's own output (diffusers' save progress bars)
  with pytest.raises(SystemExit) as exit_info:
    convert.main(argv)
  assert exit_info.value.code == 2 and not os.path.exists(out)
  err = capsys.readouterr().err
  assert err.count("\n") == 1, err
  assert err.split(": error: ")[1] == (
    "the high checkpoint is dim=32, 2 layers but --config "
    "configs/wan22_t2v_a14b.py says dim=5120, 40 layers: 8 model fields differ from "
    "transformer/config.json and tensor shapes (dim 32 vs 5120, num_layers 2 vs 40, num_heads 2 "
    "vs 40, +5 more); use configs/tiny.py, or omit --config\n"
  )
