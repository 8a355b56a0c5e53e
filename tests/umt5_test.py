"""umT5 encoder: parity with transformers (and Wan's T5 names), key maps, dtypes, sharding."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import UMT5Config as HFConfig
from transformers import UMT5EncoderModel

from holocine_jax import sharding
from holocine_jax.model import umt5
from holocine_jax.weights import formats, keymap
from holocine_jax.weights import transformers_umt5 as tu
from tests import support

TINY = dict(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2)


def _config(**kw):
  return umt5.UMT5Config(**{**TINY, "param_dtype": "float32", "dtype": "float32", **kw})


def _hf_model(seed=0):
  """Tiny transformers UMT5EncoderModel with O(1) random weights (norm scales around 1)."""
  hf = HFConfig(
    vocab_size=TINY["vocab_size"], d_model=TINY["d_model"], d_kv=TINY["d_kv"],
    d_ff=TINY["d_ff"], num_layers=TINY["num_layers"], num_heads=TINY["num_heads"],
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6,
  )  # fmt: skip
  torch.manual_seed(seed)
  model = UMT5EncoderModel(hf).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(1 + 0.2 * torch.randn_like(p))
      elif "relative_attention_bias" in name or "shared" in name:
        p.copy_(torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) * p.shape[1] ** -0.5)
  return model


def _inputs(batch=2, length=160, pad_from=97, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, TINY["vocab_size"], (batch, length)).astype(np.int32)
  mask = np.ones((batch, length), bool)
  if pad_from is not None:
    mask[1, pad_from:] = False
    ids[1, pad_from:] = 0
  return ids, mask


def _reference(model, ids, mask):
  with torch.no_grad():
    out = model(
      input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask.astype(int))
    ).last_hidden_state.numpy()
  keep = np.arange(ids.shape[1])[None] < mask.sum(-1)[:, None]
  return out * keep[..., None]  # what Wan / HoloCine keep: zero beyond the true length


def _state(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def test_relative_buckets_match_transformers():
  for buckets, distance in ((32, 128), (16, 64), (64, 256)):
    hf = HFConfig(relative_attention_num_buckets=buckets, relative_attention_max_distance=distance)
    attn = (
      UMT5EncoderModel._from_config(
        HFConfig(**{**hf.to_dict(), "d_model": 8, "d_kv": 2, "num_heads": 2, "d_ff": 8})
      )
      .encoder.block[0]
      .layer[0]
      .SelfAttention
    )
    rel = torch.arange(-1023, 1024)
    want = attn._relative_position_bucket(rel).numpy()
    got = umt5.relative_position_buckets(1024, buckets, distance)
    np.testing.assert_array_equal(got, want)
  table = np.asarray(umt5.bucket_table(5, _config()))
  assert table[0, 0] == 0 and table[0, 1] == 17 and table[1, 0] == 1  # key after query: upper half


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("pad", [False, True])
def test_parity_with_transformers_fp32(scan, pad):
  model = _hf_model()
  config = _config(scan_layers=scan)
  params = keymap.convert(_state(model), tu.rules(scan), formats.abstract("umt5", config)[0])
  ids, mask = _inputs(pad_from=97 if pad else None)
  want = _reference(model, ids, mask)
  got = np.asarray(jax.jit(lambda p, i, m: umt5.encode(p, i, m, config=config))(params, ids, mask))
  # measured: max abs error 3.1e-6 at output scale 4.6 (relative 6.8e-7), fp32 on CPU
  err = np.abs(got - want).max() / np.abs(want).max()
  assert err < 1e-5, err
  if pad:
    assert not got[1, 97:].any() and np.abs(got[1, :97]).min() > 0


def test_wan_names_give_the_same_params():
  hf_state = _state(_hf_model())
  target = formats.abstract("umt5", _config())[0]
  a = keymap.convert(hf_state, tu.RULES, target)
  b = keymap.convert(support.to_wan_names(hf_state, TINY["num_layers"]), tu.WAN_RULES, target)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_keymap_reports_problems():
  state = _state(_hf_model())
  target = formats.abstract("umt5", _config())[0]
  # a full encoder-decoder checkpoint: decoder / lm_head keys are ignored with IGNORE
  full = {**state, "decoder.block.0.layer.0.SelfAttention.q.weight": np.zeros((32, 32))}
  full["lm_head.weight"] = np.zeros((128, 32))
  keymap.convert(full, tu.RULES, target, ignore=tu.IGNORE)
  del state["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
  with pytest.raises(keymap.KeyMapError, match=r"layers/ffn/wo/kernel layers \[1\]"):
    keymap.convert(state, tu.RULES, target)
  wide = formats.abstract("umt5", _config(d_ff=96))[0]
  with pytest.raises(keymap.KeyMapError, match="shape mismatch"):
    keymap.convert(_state(_hf_model()), tu.RULES, wide, config_hint="tiny")


def test_bf16_close_to_fp32():
  model = _hf_model()
  ids, mask = _inputs()
  want = _reference(model, ids, mask)
  config = _config(param_dtype="bfloat16", dtype="bfloat16")
  params = keymap.convert(_state(model), tu.RULES, formats.abstract("umt5", config)[0])
  got = umt5.encode(params, ids, mask, config=config)
  assert got.dtype == jnp.bfloat16
  err = np.abs(np.asarray(got, np.float32) - want).max() / np.abs(want).max()
  assert err < 5e-2, err  # measured 1.5e-2: bf16 params, activations and residual stream


def test_every_param_has_logical_axes():
  _, specs = formats.abstract("umt5", umt5.UMT5Config(**TINY))
  flat = jax.tree_util.tree_leaves_with_path(
    specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
  )
  got = {jax.tree_util.keystr(k): tuple(v) for k, v in flat}
  assert got["['token_embedding']"] == ("vocab", "embed")
  assert got["['layers']['attn']['q']['kernel']"] == ("layers", "embed", "heads", "kv")
  assert got["['layers']['attn']['o']['kernel']"] == ("layers", "heads", "kv", "embed")
  assert got["['layers']['attn']['rel_bias']"] == ("layers", "rel_buckets", "heads")
  assert got["['layers']['ffn']['wi_0']['kernel']"] == ("layers", "embed", "mlp")
  assert got["['layers']['ffn']['wo']['kernel']"] == ("layers", "mlp", "embed")
  assert got["['norm_out']['scale']"] == ("embed",)
  assert len(got) == 12


def test_input_errors():
  config = _config()
  params = keymap.convert(_state(_hf_model()), tu.RULES, formats.abstract("umt5", config)[0])
  ids, mask = _inputs()
  with pytest.raises(ValueError, match="mask shape"):
    umt5.encode(params, ids, mask[:, :5], config=config)
  with pytest.raises(ValueError, match="integers"):
    umt5.encode(params, ids.astype(np.float32), mask, config=config)
  with pytest.raises(ValueError, match="num_buckets"):
    umt5.UMT5Config(num_buckets=7)


_CHILD = textwrap.dedent(
  """
  import jax, numpy as np
  from tokenizers import Tokenizer as Backend, models, pre_tokenizers, processors
  from holocine_jax import sharding, text
  from holocine_jax.model import umt5
  from holocine_jax.scene import Scene
  from holocine_jax.weights import formats, store
  P = jax.sharding.PartitionSpec
  assert jax.device_count() == 8, jax.devices()
  rules = sharding.DEFAULT_LOGICAL_RULES
  config = umt5.UMT5Config(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=64,
                           num_layers=2, param_dtype="float32", dtype="float32")
  rng = np.random.default_rng(0)
  host = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.3).astype(np.float32),
                      formats.abstract("umt5", config)[0])
  ids = rng.integers(0, 128, (4, 48)).astype(np.int32)
  mask = np.arange(48)[None] < np.array([48, 30, 7, 48])[:, None]
  want = np.asarray(umt5.encode(host, ids, mask, config=config))
  for sizes in ({"fsdp": 2, "tensor": 4}, {"data": 2, "fsdp": 2, "tensor": 2}):
    mesh = sharding.make_mesh(sizes)
    shardings = jax.tree.map(lambda t: t.sharding, store.target("umt5", config, mesh, rules))
    params = jax.device_put(host, shardings)
    q = params["layers"]["attn"]["q"]["kernel"]
    assert q.sharding.spec == P(None, "fsdp", "tensor", None), q.sharding.spec
    assert q.addressable_shards[0].data.shape == (2, 32 // sizes["fsdp"], 4 // sizes["tensor"], 8)
    got = umt5.make_encode_fn(config, mesh, rules, shardings)(params, ids, mask)
    print(sizes, "max err", float(np.abs(np.asarray(got) - want).max()))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)
    assert len(got.sharding.device_set) == 8
  # the prompt encoder on the last mesh: 3 prompts padded to the 4 batch shards
  scenes = [Scene.create("a red car", ["it drives", "it stops"], 33),
            Scene.create("a dog", ["runs", "sits", "sleeps"], 33)]
  words = sorted({w for s in scenes for w in s.prompt().split()} | {"bad", "quality"})
  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
  backend = Backend(models.WordLevel(vocab, unk_token="<unk>"))
  backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  backend.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                         special_tokens=[("</s>", 1)])
  tok = text.Tokenizer(backend)
  enc = text.PromptEncoder(tok, config, params, mesh, rules, text_len=32)
  out = enc.encode([*scenes, "bad quality"])
  ids, mask, windows = text.tokenize_prompts(tok, [*scenes, "bad quality"], 32)
  want = np.asarray(umt5.encode(host, ids, mask, config=config))
  np.testing.assert_allclose(np.asarray(out.context_BxTxD), want, atol=1e-5, rtol=1e-5)
  assert out.windows == windows and windows[2] is None and windows[1].num_shots == 3
  print("OK")
  """
)


def test_sharded_equals_single_device():
  env = dict(os.environ)
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run(
    [sys.executable, "-c", _CHILD], env=env, cwd=root, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-4000:]


def test_init_sharded_on_one_device_mesh():
  mesh = sharding.make_mesh({"data": -1})
  init = umt5.init_fn(_config())
  params, shards = sharding.init_sharded(
    init, mesh, sharding.DEFAULT_LOGICAL_RULES, jax.random.key(0)
  )
  assert params["layers"]["attn"]["rel_bias"].shape == (2, 32, 4)
  assert jax.tree.structure(params) == jax.tree.structure(shards)


def test_xxl_shapes_and_memory():
  """umT5-XXL as Wan ships it: 5.68B params; bf16 on an fsdp 4 x tensor 4 mesh -> 0.71 GB/chip."""
  config = umt5.UMT5Config.from_config({})
  shapes, specs = formats.abstract("umt5", config)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert (
    count == 256384 * 4096 + 24 * (4 * 4096 * 4096 + 3 * 4096 * 10240 + 32 * 64 + 2 * 4096) + 4096
  )
  assert shapes["layers"]["attn"]["q"]["kernel"].shape == (24, 4096, 64, 64)
  assert shapes["layers"]["attn"]["q"]["kernel"].dtype == jnp.bfloat16
  per_chip = sharding.bytes_per_device(
    shapes, specs, {"fsdp": 4, "tensor": 4}, sharding.DEFAULT_LOGICAL_RULES
  )
  assert abs(per_chip - 2 * count / 16) / per_chip < 1e-3, per_chip
