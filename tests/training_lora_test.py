"""LoRA training: steps leave the frozen base bit-identical and optimize the adapters only, the
toy loss falls on bf16 / int8 / nf4 bases, a resumed run equals the straight one bit for bit,
checkpoints hold adapters only, a LoRA workdir loads as merged plain params; no base, or a base
that changed since the run started, is one error."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import tiny
from holocine_jax import sharding
from holocine_jax.model import lora
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT
from holocine_jax.training import init_from, loop, state
from holocine_jax.weights import store
from tests import support

STEPS = 30


def _config(arg="", **train):
  config = tiny.get_config(f"lora=4,lr=1e-2,steps={STEPS},ckpt_every=15,{arg}".rstrip(","))
  config.data.frame_choices = (17,)  # one shape bucket: one compile
  config.train.update(progress_bar=False, tensorboard=False, async_checkpoint=False, **train)
  config.train.warmup_steps = 2
  return config


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  folder = tmp_path_factory.mktemp("converted")
  plain = DiTConfig.from_config(tiny.get_config().model)
  support.write_converted(folder, plain, experts=("high",))
  return str(folder)


def _bits(tree):
  return [np.asarray(x).view(np.uint8) for x in jax.tree.leaves(tree)]


def _nbytes(tree):
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


@pytest.mark.slow
@pytest.mark.parametrize("base", ["int8", "nf4"])
def test_steps_train_adapters_only_on_a_frozen_base(converted, base):
  config = _config(f"lora_base={base}", init_from=converted)
  mesh, rules = sharding.make_mesh(config.mesh), config.logical_rules
  model = WanDiT(DiTConfig.from_config(config.model))
  init = init_from.resolve(config, "/nonexistent", model.config)
  frozen, base_shardings, _ = init_from.lora_base(init, model.config, mesh, rules, "/nonexistent")
  before = [b.copy() for b in _bits(frozen)]
  tx, schedule = state.optimizer(config.train)
  train_state, shardings = state.create(model, tx, mesh, rules, jax.random.key(0))
  adapters = traverse_util.flatten_dict(train_state.params)
  assert adapters and all(lora.is_adapter(path) for path in adapters)
  # Adam's two moments over the adapters and nothing else (a count and a scalar besides).
  moments = [x for x in jax.tree.leaves(train_state.opt_state) if x.ndim]
  assert len(moments) == 2 * len(adapters)
  assert _nbytes(moments) == 2 * _nbytes(train_state.params)

  train_state, losses, _ = support.run_steps(
    config, mesh, model, train_state, shardings, STEPS, frozen, base_shardings
  )
  for got, want in zip(_bits(frozen), before, strict=True):
    np.testing.assert_array_equal(got, want)
  first, last = np.mean(losses[:5]), np.mean(losses[-5:])
  assert last < 0.8 * first, (first, last)


class Stop(Exception):
  """Ends a run after a step, as a crash would."""


def _stop_at(step):
  def on_step(done, *_):
    if done == step:
      raise Stop

  return on_step


@pytest.mark.slow
def test_resumed_run_equals_the_straight_one_and_loads_merged(converted, tmp_path):
  config = _config(init_from=converted)  # a bf16 base
  straight = support.train_in(config, tmp_path / "straight")
  losses = [straight.losses[s] for s in range(1, STEPS + 1)]
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
  with pytest.raises(Stop):
    support.train_in(config, tmp_path / "cut", on_step=_stop_at(15))
  resumed = support.train_in(config, tmp_path / "cut")
  assert resumed.start_step == 15
  assert resumed.losses == {s: straight.losses[s] for s in range(16, STEPS + 1)}
  for a, b in zip(_bits(resumed.state.params), _bits(straight.state.params), strict=True):
    np.testing.assert_array_equal(a, b)

  # The checkpoint holds the adapters (and their optimizer state) only.
  saved = json.loads((tmp_path / "straight/checkpoints/30/state/_METADATA").read_text())
  params = [k for k in saved["tree_metadata"] if k.startswith("('params'")]
  assert params and all(k.endswith(("'lora_a')", "'lora_b')")) for k in params)

  # Sampling / export read the workdir as the plain model with the adapters merged in.
  source = store.source(str(tmp_path / "straight"))
  assert source.lora is not None and source.config.lora_rank == 0
  mesh, rules = sharding.make_mesh(config.mesh), config.logical_rules
  merged = source.load(source.experts[0], mesh, rules)
  model = DiTConfig.from_config(config.model)
  base, _ = store.lora_base(store.source(converted), ("high",), model, mesh, rules)
  adapters = straight.state.params["params"]
  want = jax.jit(lambda b, a: lora.merge_adapters(b, a, model))(base["params"], adapters)
  flat_merged, flat_want = (traverse_util.flatten_dict(t) for t in (merged, want))
  flat_base = traverse_util.flatten_dict(base["params"])
  assert flat_merged.keys() == flat_want.keys()
  for path, value in flat_merged.items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_want[path]), "/".join(path))
    if path[-1] == "kernel" and path[-2] in ("q", "ffn_in"):
      assert not np.array_equal(np.asarray(value), np.asarray(flat_base[path])), path
  np.testing.assert_array_equal(
    np.asarray(flat_merged[("patch_embedding", "kernel")]),
    np.asarray(flat_base[("patch_embedding", "kernel")]),
  )


def test_lora_needs_a_base(tmp_path):
  with pytest.raises(ValueError, match="model.lora_rank=4 trains adapters on a frozen base: set "):
    loop.train(_config(), tmp_path)
  assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_changed_base_is_one_error_naming_both_fingerprints(converted, tmp_path):
  config = _config("lora_base=int8", init_from=converted)
  model = DiTConfig.from_config(config.model)
  init = init_from.resolve(config, tmp_path, model)
  init_from.write_record(tmp_path, init, "0123456789abcdef")  # as if started from other weights
  before = sorted(tmp_path.rglob("*"))
  with pytest.raises(ValueError, match=r"now holds other weights \(fingerprint [0-9a-f]{16}\) .*"
                     r"\(0123456789abcdef\)"):  # fmt: skip
    loop.train(config, tmp_path)
  assert sorted(tmp_path.rglob("*")) == before
