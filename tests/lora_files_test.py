"""LoRA files: the three namings read into the same adapters, write -> read is exact, and files
that do not fit the model fail with one error each."""

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from configs import tiny
from holocine_jax.model.config import DiTConfig
from holocine_jax.weights import formats, lora_files, reader
from tests import lora_reference as lr

CONFIG = DiTConfig.from_config(tiny.get_config("").model)  # dim 32, 2 heads, ffn 64, 2 layers
D, F, R = CONFIG.dim, CONFIG.ffn_dim, 4


def our_delta(result, module, layer):
  """The same update from our adapters: (alpha / r) (A B)^T over the flattened in / out dims."""
  leaves = result.adapters["blocks"]
  for part in module.split("/"):
    leaves = leaves[part]
  a, b = leaves["lora_a"][layer], leaves["lora_b"][layer]
  a, b = a.reshape(-1, a.shape[-1]), b.reshape(b.shape[0], -1)
  return result.alpha / result.rank * (a @ b).T


@pytest.mark.parametrize("naming", ["diffusers", "wan", "wan_ab", "wan_bare", "musubi"])
def test_each_naming_reads_the_same_adapters(tmp_path, naming):
  lora = lr.torch_lora(alpha=2.0)
  got = lora_files.read(lr.save(tmp_path / "l.safetensors", lora, naming), CONFIG)
  assert got.naming == naming.split("_")[0] and got.rank == R
  assert got.targets == tuple(sorted(lr.MODULES))
  for m, i in lora:
    np.testing.assert_allclose(our_delta(got, m, i), lr.delta(lora, m, i), rtol=1e-6, atol=1e-6)
  # the layout SPEC names: lora_a [layers, *in, r], lora_b [layers, r, *out]
  blocks = got.adapters["blocks"]
  assert blocks["self_attn"]["q"]["lora_a"].shape == (2, D, R)
  assert blocks["self_attn"]["q"]["lora_b"].shape == (2, R, CONFIG.num_heads, CONFIG.head_dim)
  assert blocks["self_attn"]["o"]["lora_a"].shape == (2, CONFIG.num_heads, CONFIG.head_dim, R)
  assert blocks["ffn_in"]["lora_b"].shape == (2, R, F)
  if naming != "diffusers":  # alpha kept as is, adapters untouched
    assert got.alpha == 2.0
    np.testing.assert_array_equal(blocks["ffn_in"]["lora_a"][1], lora["ffn_in", 1][0].T)


def test_untouched_layers_are_zero_and_ranks_are_padded(tmp_path):
  lora = {
    **lr.torch_lora(("self_attn/q",), (1,), rank=2, alpha=1.0),
    **lr.torch_lora(("ffn_out",), (0,), rank=4),
  }
  got = lora_files.read(lr.save(tmp_path / "l.safetensors", lora, "wan"), CONFIG)
  assert got.rank == 4 and got.targets == ("ffn_out", "self_attn/q")
  q = got.adapters["blocks"]["self_attn"]["q"]
  assert not q["lora_a"][0].any() and not q["lora_b"][0].any() and not q["lora_a"][1, :, 2:].any()
  for key in lora:  # alpha / r 0.5 and 1: folded into lora_b against the common alpha / r
    np.testing.assert_allclose(our_delta(got, *key), lr.delta(lora, *key), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", lora_files.FORMATS)
def test_write_then_read_is_exact(tmp_path, fmt):
  lora = lr.torch_lora(alpha=float(R))
  first = lora_files.read(lr.save(tmp_path / "in.safetensors", lora, "wan"), CONFIG)
  path = str(tmp_path / "out.safetensors")
  n = lora_files.write(path, first.adapters, fmt, alpha=first.alpha)
  assert n == len(lora) * (2 if fmt == "diffusers" else 3)
  again = lora_files.read(path, CONFIG)
  assert (again.naming, again.rank, again.alpha) == (fmt, R, float(R))
  jax.tree.map(np.testing.assert_array_equal, again.adapters, first.adapters)
  keys = set(reader.read_safetensors(path))
  want = (
    "transformer.blocks.0.attn1.to_q.lora_A.weight"
    if fmt == "diffusers"
    else ("diffusion_model.blocks.0.self_attn.q.lora_down.weight")
  )
  assert want in keys


def test_alpha_is_kept_in_wan_files_and_folded_in_diffusers_files(tmp_path):
  lora = lr.torch_lora(("cross_attn/o",), alpha=8.0)
  first = lora_files.read(lr.save(tmp_path / "in.safetensors", lora, "wan"), CONFIG)
  for fmt in lora_files.FORMATS:
    path = str(tmp_path / f"{fmt}.safetensors")
    lora_files.write(path, first.adapters, fmt, alpha=first.alpha)
    got = lora_files.read(path, CONFIG)
    assert got.alpha == (8.0 if fmt == "wan" else R)
    np.testing.assert_allclose(
      our_delta(got, "cross_attn/o", 1), lr.delta(lora, "cross_attn/o", 1), rtol=1e-6
    )


def test_keys_that_match_nothing_are_one_error(tmp_path):
  lora = lr.torch_lora(("self_attn/q",))
  path = lr.save(tmp_path / "l.safetensors", lora, "wan")
  state = dict(reader.read_safetensors(path))
  state["diffusion_model.img_emb.proj.1.lora_down.weight"] = np.zeros((R, D), np.float32)  # I2V
  state["diffusion_model.blocks.0.self_attn.q.dora_scale"] = np.zeros((D,), np.float32)
  save_file(state, path)
  with pytest.raises(lora_files.LoraFileError, match=r"2 keys match no parameter .*img_emb"):
    lora_files.read(path, CONFIG)
  del state["diffusion_model.img_emb.proj.1.lora_down.weight"]
  del state["diffusion_model.blocks.0.self_attn.q.dora_scale"]
  state["diffusion_model.head.head.lora_down.weight"] = np.zeros((R, D), np.float32)
  save_file(state, path)
  with pytest.raises(lora_files.LoraFileError, match="without a matching down and up: head$"):
    lora_files.read(path, CONFIG)
  save_file({"model.layers.0.mlp.lora_A.weight": np.zeros((R, D), np.float32)}, path)
  with pytest.raises(lora_files.LoraFileError, match="no key is a Wan LoRA key"):
    lora_files.read(path, CONFIG)


def test_a_lora_for_another_architecture_is_one_error(tmp_path):
  wide = DiTConfig.from_config(tiny.get_config("size=wide").model)  # dim 64, 4 layers
  path = lr.save(tmp_path / "l.safetensors", lr.torch_lora(), "diffusers")
  lora_files.read(path, CONFIG)  # fits the tiny model
  with pytest.raises(
    lora_files.LoraFileError,
    match=r"another architecture.*up \[32, 4\] vs the model's weight \[64, 64\]",
  ):
    lora_files.read(path, wide)
  deeper = lr.save(tmp_path / "d.safetensors", lr.torch_lora(layers=(0, 2)), "wan")
  with pytest.raises(lora_files.LoraFileError, match="layer 2.*the model has 2 layers"):
    lora_files.read(deeper, CONFIG)


def test_parse_lora_flags(tmp_path):
  path = str(tmp_path / "a:b.safetensors")  # a ':' in the name is not a scale
  open(path, "wb").close()
  both, one = lora_files.EXPERTS, ("low",)
  assert lora_files.parse(path) == lora_files.Request(path, 1.0, both)
  assert lora_files.parse(f"{path}:0.5") == lora_files.Request(path, 0.5, both)
  assert lora_files.parse(f"low={path}:-1e-1") == lora_files.Request(path, -0.1, one)
  for bad, match in (
    (f"{path}:half", "the scale after ':' must be a number"),
    (f"high={path}:inf", "the scale must be finite"),
    (str(tmp_path / "none.safetensors"), "no file"),
    (f"mid={tmp_path}/x.safetensors", "no file"),
  ):
    with pytest.raises(lora_files.LoraFileError, match=match):
      lora_files.parse(bad)


def test_unrolled_models_write_and_merge_as_scanned(tmp_path):
  got = lora_files.read(
    lr.save(tmp_path / "in.safetensors", lr.torch_lora(alpha=2.0), "wan"), CONFIG
  )
  unrolled = lora_files._unrolled(got.adapters)
  assert sorted(unrolled) == ["blocks_0", "blocks_1"]
  for name, adapters in (("s", got.adapters), ("u", unrolled)):
    lora_files.write(str(tmp_path / f"{name}.safetensors"), adapters, "wan", alpha=got.alpha)
  assert (tmp_path / "s.safetensors").read_bytes() == (tmp_path / "u.safetensors").read_bytes()
  shapes, _ = formats.abstract("dit", CONFIG)
  rng = np.random.RandomState(0)
  params = jax.tree.map(lambda s: rng.randn(*s.shape).astype(np.float32), shapes)
  flat = {k: v for k, v in params.items() if k != "blocks"}
  flat.update(
    {f"blocks_{i}": jax.tree.map(lambda x, i=i: x[i], params["blocks"]) for i in range(2)}
  )
  loaded = lora_files.load([lora_files.parse(f"{tmp_path}/in.safetensors:0.5")], CONFIG)
  want = lora_files.apply(jax.device_put(params), loaded, CONFIG, "low")
  got_u = lora_files.apply(jax.device_put(flat), loaded, CONFIG, "low")
  for i in range(2):
    jax.tree.map(
      lambda a, b, i=i: np.testing.assert_array_equal(np.asarray(a)[i], b),
      want["blocks"],
      jax.device_get(got_u[f"blocks_{i}"]),
    )
  assert not np.allclose(want["blocks"]["ffn_in"]["kernel"], params["blocks"]["ffn_in"]["kernel"])


def test_whole_param_deltas_are_read_into_the_params_layout(tmp_path):
  path = lr.save(
    tmp_path / "l.safetensors", lr.torch_lora(("self_attn/q",), (1,)), "wan", bias=True
  )
  state = dict(reader.read_safetensors(path))
  rng = np.random.RandomState(0)
  extra = {
    "diffusion_model.blocks.0.norm3.diff": rng.randn(D).astype(np.float32),  # norm_cross scale
    "diffusion_model.blocks.1.diff_m": rng.randn(1, 6, D).astype(np.float32),  # modulation
    "diffusion_model.head.head.diff_b": rng.randn(16).astype(np.float32),  # 4 channels x 1x2x2
    "diffusion_model.blocks.0.ffn.2.diff": rng.randn(D, F).astype(np.float32),  # [out, in]
    "diffusion_model.time_projection.1.lora_down.weight": rng.randn(2, D).astype(np.float32),
    "diffusion_model.time_projection.1.lora_up.weight": rng.randn(6 * D, 2).astype(np.float32),
    "diffusion_model.time_projection.1.alpha": np.asarray(1.0, np.float32),
  }
  save_file({**state, **extra}, path)
  got = lora_files.read(path, CONFIG)
  assert got.targets == ("self_attn/q",)
  deltas = got.deltas
  np.testing.assert_array_equal(
    deltas["blocks"]["norm_cross"]["scale"][0], extra[next(iter(extra))]
  )
  assert not deltas["blocks"]["norm_cross"]["scale"][1].any()
  np.testing.assert_array_equal(
    deltas["blocks"]["modulation"][1], extra["diffusion_model.blocks.1.diff_m"][0]
  )
  np.testing.assert_array_equal(deltas["head"]["bias"], extra["diffusion_model.head.head.diff_b"])
  np.testing.assert_array_equal(
    deltas["blocks"]["ffn_out"]["kernel"][0], extra["diffusion_model.blocks.0.ffn.2.diff"].T
  )
  np.testing.assert_array_equal(
    deltas["blocks"]["self_attn"]["q"]["bias"][1].reshape(-1),
    state["diffusion_model.blocks.1.self_attn.q.diff_b"],
  )
  up, down = (extra[f"diffusion_model.time_projection.1.lora_{p}.weight"] for p in ("up", "down"))
  got_t = deltas["time_projection"]["kernel"].reshape(D, 6 * D)  # ours: [D, 6, D]
  np.testing.assert_allclose(got_t, 0.5 * (up @ down).T, rtol=1e-6)
  # applied at the LoRA's scale, beside the adapters
  shapes, _ = formats.abstract("dit", CONFIG)
  params = jax.tree.map(lambda s: np.ones(s.shape, np.float32), shapes)
  loaded = lora_files.load([lora_files.parse(f"{path}:0.5")], CONFIG)
  merged = jax.device_get(lora_files.apply(jax.device_put(params), loaded, CONFIG, "high"))
  np.testing.assert_allclose(
    merged["head"]["bias"], 1 + 0.5 * extra["diffusion_model.head.head.diff_b"], rtol=1e-6
  )
  # a delta of another shape is the architecture error
  save_file({**state, "diffusion_model.blocks.0.norm3.diff": np.zeros(2 * D, np.float32)}, path)
  with pytest.raises(
    lora_files.LoraFileError, match=r"norm_cross/scale layer 0: delta \[64\] vs the model's \[32\]"
  ):
    lora_files.read(path, CONFIG)
