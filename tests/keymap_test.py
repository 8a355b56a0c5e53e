"""Key-map conversion errors name the key and what is wrong."""

import jax
import numpy as np
import pytest
from flax.core import meta

from configs import tiny
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT
from holocine_jax.weights import diffusers_dit, keymap, wan_dit
from tests import wan_reference


@pytest.fixture(scope="module")
def state_and_target():
  model = WanDiT(DiTConfig.from_config(tiny.get_config().model))
  x, t, ctx = np.zeros((1, 1, 2, 2, 4)), np.zeros((1,)), np.zeros((1, 4, 24))
  target = meta.unbox(jax.eval_shape(model.init, jax.random.key(0), x, t, ctx))["params"]
  return wan_reference.state_dict(wan_reference.tiny_wan()), target


def _convert(state, target):
  return keymap.convert(state, diffusers_dit.RULES, target, config_hint="tiny")


def test_round_trip_fills_every_parameter(state_and_target):
  state, target = state_and_target
  params = _convert(state, target)
  assert jax.tree.structure(params) == jax.tree.structure(target)
  np.testing.assert_array_equal(
    params["blocks"]["self_attn"]["q"]["kernel"][1].reshape(32, 32),
    state["blocks.1.attn1.to_q.weight"].T,
  )


@pytest.mark.parametrize(
  ("edit", "match"),
  [
    (lambda s: s.pop("proj_out.bias"), r"missing parameters: \['head/bias'\]"),
    (lambda s: s.pop("blocks.1.ffn.net.2.weight"), r"blocks/ffn_out/kernel layers \[1\]"),
    (lambda s: s.update(extra=np.zeros(3)), r"unexpected checkpoint keys: \['extra'\]"),
    (
      lambda s: s.update({"blocks.0.attn1.to_q.weight": np.zeros((16, 32))}),
      r"blocks.0.attn1.to_q.weight -> blocks/self_attn/q/kernel: expected \(32, 2, 16\), got "
      r"\(16, 32\).*config tiny",
    ),
    (
      lambda s: s.update({"blocks.7.norm2.weight": np.zeros(32)}),
      "layer 7 but the model has 2 layers",
    ),
  ],
)
def test_broken_checkpoint(state_and_target, edit, match):
  state, target = state_and_target
  state = dict(state)
  edit(state)
  with pytest.raises(keymap.KeyMapError, match=match):
    _convert(state, target)


# diffusers -> original Wan names, as HoloCine's WanModelStateDictConverter.from_diffusers lists
# them (block 0 shown there; every block alike).
_BLOCK_TO_ORIGINAL = {
  "attn1.norm_k.weight": "self_attn.norm_k.weight",
  "attn1.norm_q.weight": "self_attn.norm_q.weight",
  "attn1.to_k.bias": "self_attn.k.bias",
  "attn1.to_k.weight": "self_attn.k.weight",
  "attn1.to_out.0.bias": "self_attn.o.bias",
  "attn1.to_out.0.weight": "self_attn.o.weight",
  "attn1.to_q.bias": "self_attn.q.bias",
  "attn1.to_q.weight": "self_attn.q.weight",
  "attn1.to_v.bias": "self_attn.v.bias",
  "attn1.to_v.weight": "self_attn.v.weight",
  "attn2.norm_k.weight": "cross_attn.norm_k.weight",
  "attn2.norm_q.weight": "cross_attn.norm_q.weight",
  "attn2.to_k.bias": "cross_attn.k.bias",
  "attn2.to_k.weight": "cross_attn.k.weight",
  "attn2.to_out.0.bias": "cross_attn.o.bias",
  "attn2.to_out.0.weight": "cross_attn.o.weight",
  "attn2.to_q.bias": "cross_attn.q.bias",
  "attn2.to_q.weight": "cross_attn.q.weight",
  "attn2.to_v.bias": "cross_attn.v.bias",
  "attn2.to_v.weight": "cross_attn.v.weight",
  "ffn.net.0.proj.bias": "ffn.0.bias",
  "ffn.net.0.proj.weight": "ffn.0.weight",
  "ffn.net.2.bias": "ffn.2.bias",
  "ffn.net.2.weight": "ffn.2.weight",
  "norm2.bias": "norm3.bias",
  "norm2.weight": "norm3.weight",
  "scale_shift_table": "modulation",
}
_TOP_TO_ORIGINAL = {
  "condition_embedder.text_embedder.linear_1.bias": "text_embedding.0.bias",
  "condition_embedder.text_embedder.linear_1.weight": "text_embedding.0.weight",
  "condition_embedder.text_embedder.linear_2.bias": "text_embedding.2.bias",
  "condition_embedder.text_embedder.linear_2.weight": "text_embedding.2.weight",
  "condition_embedder.time_embedder.linear_1.bias": "time_embedding.0.bias",
  "condition_embedder.time_embedder.linear_1.weight": "time_embedding.0.weight",
  "condition_embedder.time_embedder.linear_2.bias": "time_embedding.2.bias",
  "condition_embedder.time_embedder.linear_2.weight": "time_embedding.2.weight",
  "condition_embedder.time_proj.bias": "time_projection.1.bias",
  "condition_embedder.time_proj.weight": "time_projection.1.weight",
  "patch_embedding.bias": "patch_embedding.bias",
  "patch_embedding.weight": "patch_embedding.weight",
  "scale_shift_table": "head.modulation",
  "proj_out.bias": "head.head.bias",
  "proj_out.weight": "head.head.weight",
}


def _original_name(key: str) -> str:
  parts = key.split(".")
  if parts[0] == "blocks":
    return ".".join(parts[:2] + [_BLOCK_TO_ORIGINAL[".".join(parts[2:])]])
  return _TOP_TO_ORIGINAL[key]


def test_original_wan_names_give_the_same_params(state_and_target):
  state, target = state_and_target
  original = {_original_name(k): v for k, v in state.items()}
  assert "blocks.1.norm3.weight" in original and "head.modulation" in original
  got = keymap.convert(original, wan_dit.RULES, target)
  want = _convert(state, target)
  jax.tree.map(np.testing.assert_array_equal, got, want)
