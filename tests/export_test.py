"""Export: convert -> export is bit-exact (fp32, bf16; diffusers and original names), diffusers
runs our forward from an exported folder, a training workdir exports its params, and bad
inputs fail with one clear error each."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file

from configs import tiny
from holocine_jax import convert, export
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT
from holocine_jax.training import loop
from holocine_jax.weights import diffusers_dit, formats, keymap, reader, store
from tests import support
from tests import wan_reference as ref

TINY = os.path.join(support.ROOT, "configs/tiny.py")


def _write_source(fmt, root, dtype):
  """Two tiny random experts saved in `fmt`'s layout as `dtype`; returns {expert: state dict}."""
  models = {
    n: ref.tiny_wan(seed).to(getattr(torch, dtype)) for n, seed in (("high", 0), ("low", 1))
  }
  if fmt == "diffusers":
    models["high"].save_pretrained(os.path.join(root, "transformer"), max_shard_size="40KB")
    models["low"].save_pretrained(os.path.join(root, "transformer_2"))
    return {n: support.state_dict(m) for n, m in models.items()}
  states = {n: support.original_dit(m) for n, m in models.items()}
  for name, state in states.items():
    if fmt == "wan":
      support.save_sharded(
        state, os.path.join(root, f"{name}_noise_model"), "diffusion_pytorch_model"
      )
    else:
      save_file(state, os.path.join(root, f"full_{name}_noise.safetensors"))
  return states


def _files(folder, fmt, name):
  return next(c.files for c in formats.find_components(folder, fmt)[1] if c.name == name)


def _bits(x):
  """The raw bits of a numpy array or torch tensor (bit-exact comparison, NaN-safe)."""
  if isinstance(x, torch.Tensor):
    return x.view(torch.int16 if x.element_size() == 2 else torch.int32).numpy()
  return x.view(np.int16 if x.dtype.itemsize == 2 else np.int32)


@pytest.mark.parametrize(
  ("fmt", "dtype"),
  [
    ("diffusers", "float32"),
    ("diffusers", "bfloat16"),
    ("holocine", "float32"),
    ("holocine", "bfloat16"),
    ("wan", "bfloat16"),
  ],
)
def test_convert_then_export_is_bit_exact(tmp_path, fmt, dtype):
  src, converted, out = (str(tmp_path / n) for n in ("src", "converted", "out"))
  os.makedirs(src)
  states = _write_source(fmt, src, dtype)
  argv = ["--src", src, "--format", fmt, "--config", TINY, "--param_dtype", dtype, "--out"]
  convert.main([*argv, converted, "--no_progress", "--components", "high,low"])
  record = export.main(
    ["--checkpoint", converted, "--format", fmt, "--out", out, "--shard_mb", "0.05"]
  )
  assert record["kind"] == "converted" and set(record["files"]) == {"high", "low"}
  for name, state in states.items():
    files = _files(out, fmt, name)
    if fmt != "holocine":  # 0.05 MiB shards: an index and several files, as diffusers writes them
      assert len(files) > 1
    got = reader.Checkpoint(files)
    assert sorted(got) == sorted(state)
    for key, want in state.items():
      assert got[key].dtype == jnp.dtype(dtype), key
      np.testing.assert_array_equal(_bits(got[key]), _bits(want), err_msg=key)
    assert load_file(files[0]).keys() <= state.keys()  # safetensors itself reads what we wrote
  if fmt == "wan":
    with open(os.path.join(out, "high_noise_model", "config.json")) as f:
      assert json.load(f)["_class_name"] == "WanModel"


def _random_params(config, seed=0):
  """Every param random (norms, tables and biases too, so no transposition hides in zeros)."""
  rng = np.random.RandomState(seed)
  shapes, _ = formats.abstract("dit", config)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.randn(*s.shape), s.dtype), shapes)


def test_diffusers_runs_our_forward_from_the_exported_folder(tmp_path):
  config = DiTConfig.from_config(tiny.get_config("window=false").model)
  params = _random_params(config)
  files = export.write_expert(
    params, config, "diffusers", "high", str(tmp_path), dtype=np.float32, shard_bytes=40_000
  )
  assert len(files) > 1
  model = WanTransformer3DModel.from_pretrained(str(tmp_path), subfolder="transformer").eval()
  x, t, ctx = support.dit_inputs((2, 7, 4, 6, 4), 16)
  want = ref.run(model, x, t, ctx)
  out = jax.jit(WanDiT(config).apply)({"params": params}, x, t, ctx)
  # Measured 8e-7 relative (the same math as dit_test's parity on converted weights).
  assert support.rel_err(out, want) < 1e-5
  # The same params as an unrolled (`blocks_N`) tree write the same bytes.
  unrolled = {k: v for k, v in params.items() if k != "blocks"}
  for i in range(config.num_layers):
    unrolled[f"blocks_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["blocks"])
  export.write_expert(
    unrolled, config, "diffusers", "high", str(tmp_path / "u"), dtype=np.float32, shard_bytes=40_000
  )
  for name in files:
    assert (tmp_path / name).read_bytes() == (tmp_path / "u" / name).read_bytes()


def test_export_from_training_workdir(tmp_path):
  config = tiny.get_config("steps=2,ckpt_every=1")
  config.data.frame_choices = (17,)
  config.train.progress_bar = config.train.tensorboard = False
  workdir, out = str(tmp_path / "w"), str(tmp_path / "out")
  result = loop.train(config, workdir)
  with pytest.raises(FileNotFoundError, match="config.json; pass the config"):
    export.export(workdir, out, fmt="diffusers")
  with open(os.path.join(workdir, "config.json"), "w") as f:  # as the train CLI writes it
    json.dump(json.loads(config.to_json_best_effort()), f)
  with pytest.raises(ValueError, match=r"no step 7; it has steps \[1, 2\]"):
    export.export(workdir, out, fmt="diffusers", step=7)

  record = export.main(["--checkpoint", workdir, "--format", "diffusers", "--out", out])
  assert record["step"] == 2 and record["kind"] == "training"
  model_config = DiTConfig.from_config(config.model)
  target, _ = formats.abstract("dit", model_config)
  for sub in ("transformer", "transformer_2"):  # train.expert=all serves both experts
    model = WanTransformer3DModel.from_pretrained(out, subfolder=sub)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    got = keymap.convert(state, diffusers_dit.RULES, target)
    jax.tree.map(np.testing.assert_array_equal, got, result.state.params["params"])

  stamp = os.stat(os.path.join(out, export.RECORD)).st_mtime_ns
  assert export.export(workdir, out, fmt="diffusers") == record  # same request: nothing to do
  assert os.stat(os.path.join(out, export.RECORD)).st_mtime_ns == stamp
  with pytest.raises(FileExistsError, match="holds another export"):
    export.export(workdir, out, fmt="diffusers", step=1)
  old = export.export(workdir, str(tmp_path / "h1"), fmt="holocine", step=1, dtype="bfloat16")
  files = reader.Checkpoint([str(tmp_path / "h1" / "full_high_noise.safetensors")])
  assert old["step"] == 1 and files["blocks.0.self_attn.q.weight"].dtype == np.dtype("bfloat16")


@pytest.mark.parametrize(
  ("argv", "error", "match"),
  [
    (["--checkpoint", "/nonexistent/ckpt"], FileNotFoundError, "does not exist"),
    (["--step", "3"], ValueError, "--step is for training workdirs"),
    (["--format", "onnx"], SystemExit, None),
  ],
)
def test_bad_inputs(tmp_path, capsys, argv, error, match):
  converted = tmp_path / "c"
  converted.mkdir()
  (converted / store.RECORD).write_text(json.dumps({"components": {}}))
  base = {"--checkpoint": str(converted), "--format": "holocine", "--out": str(tmp_path / "o")}
  base.update(zip(argv[::2], argv[1::2], strict=True))
  with pytest.raises(error, match=match):
    export.main([x for kv in base.items() for x in kv])
  if error is SystemExit:
    assert "invalid choice: 'onnx'" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "o")
