"""Key-map conversion errors name the key and what is wrong."""

import jax
import numpy as np
import pytest
from flax.core import meta

from configs import tiny
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT
from holocine_jax.weights import diffusers_dit, keymap, wan_dit
from tests import support, wan_reference


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


def test_original_wan_names_give_the_same_params(state_and_target):
  state, target = state_and_target
  original = {support.original_name(k): v for k, v in state.items()}
  assert "blocks.1.norm3.weight" in original and "head.modulation" in original
  got = keymap.convert(original, wan_dit.RULES, target)
  want = _convert(state, target)
  jax.tree.map(np.testing.assert_array_equal, got, want)
