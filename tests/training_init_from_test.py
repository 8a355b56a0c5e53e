"""train.init_from: a learning-rate-0 step from a converted folder keeps its weights bit for bit
and starts at the base's loss; another architecture, or another init_from on resume, is one
error and writes nothing; a workdir step is a source too."""

import dataclasses
import json
import os
import re

import jax
import numpy as np
import pytest

from configs import tiny
from holocine_jax import sharding, train
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT
from holocine_jax.training import global_batch, init_from, loop, pipeline
from holocine_jax.training import loss as loss_lib
from holocine_jax.weights import store
from tests import support


def _config(arg="", **train):
  config = tiny.get_config(f"steps=1,ckpt_every=1{',' + arg if arg else ''}")
  config.data.frame_choices = (17,)  # one shape bucket: one compile
  config.train.progress_bar = False
  config.train.tensorboard = False
  config.train.async_checkpoint = False
  config.train.update(train)
  return config


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  folder = tmp_path_factory.mktemp("converted")
  return str(folder), support.write_converted(folder, DiTConfig.from_config(_config().model))


# At learning rate 0 (attention differing from the base's on purpose), from the low expert.
FINETUNE = dict(learning_rate=0.0, warmup_steps=0, init_expert="low")


@pytest.fixture(scope="module")
def finetuned(converted, tmp_path_factory):
  """(workdir, result, config) of a 1-step run from the converted folder's low expert."""
  folder, _ = converted
  workdir = tmp_path_factory.mktemp("finetuned")
  config = _config("attention=sparse", init_from=folder, **FINETUNE)
  return workdir, support.train_in(config, workdir), config


def _bits(tree):
  return [np.asarray(x).view(np.uint32) for x in jax.tree.leaves(tree)]


def _first_loss(config, params) -> float:
  """The loss of `params` on the run's first batch with its step-0 noise key."""
  mesh, rules = sharding.make_mesh(config.mesh), config.logical_rules
  source, shapes = loop.open_source(config)
  rows = global_batch.host_rows(mesh, rules, config.train.global_batch)
  host = next(iter(pipeline.from_config(source, shapes, config, rows)))
  batch = global_batch.to_global(
    host, global_batch.shardings(host, mesh, rules), config.train.global_batch, rows
  )
  model = WanDiT(DiTConfig.from_config(config.model))
  key = jax.random.fold_in(jax.random.key(config.train.seed), 0)
  fm = loss_lib.FlowMatching.from_config(config.train)
  with sharding.activate(mesh, rules):
    loss, _ = jax.jit(lambda p: loss_lib.flow_matching_loss(model.apply, p, batch, key, fm))(
      {"params": params}
    )
  return float(loss)


@pytest.mark.slow
def test_learning_rate_0_step_keeps_the_converted_weights(converted, finetuned):
  folder, experts = converted
  workdir, result, config = finetuned
  trained = store.source(str(workdir)).load(("high", "low"), sharding.make_mesh({"fsdp": -1}), [])
  assert jax.tree.structure(trained) == jax.tree.structure(experts["low"])
  for got, want in zip(_bits(trained), _bits(experts["low"]), strict=True):
    np.testing.assert_array_equal(got, want)
  assert result.losses[1] == pytest.approx(_first_loss(config, experts["low"]), rel=1e-6)
  assert result.losses[1] != pytest.approx(_first_loss(config, experts["high"]), rel=1e-3)
  record = json.loads((workdir / init_from.RECORD).read_text())
  assert record == dict(
    init_from=folder,
    expert="low",
    kind="converted",
    step=None,
    fingerprint=store.fingerprint({"params": experts["low"]}),
  )


@pytest.mark.slow
def test_a_workdir_step_is_a_source(converted, finetuned, tmp_path):
  _, experts = converted
  workdir, _, _ = finetuned
  config = _config(init_from=f"{workdir}@1", learning_rate=0.0, warmup_steps=0, expert="high")
  support.train_in(config, tmp_path)
  got = store.source(str(tmp_path)).load(("high",), sharding.make_mesh({"fsdp": -1}), [])
  for a, b in zip(_bits(got), _bits(experts["low"]), strict=True):
    np.testing.assert_array_equal(a, b)
  record = json.loads((tmp_path / init_from.RECORD).read_text())
  assert (record["init_from"], record["kind"], record["step"]) == (f"{workdir}@1", "training", 1)


@pytest.mark.slow
def test_changed_init_from_on_resume_is_one_error_naming_both(converted, finetuned):
  folder, _ = converted
  workdir, _, _ = finetuned
  before = sorted((str(p), p.stat().st_mtime_ns) for p in workdir.rglob("*"))
  resume = _config("steps=2", init_from=folder, init_expert="high")
  started = f"started from {folder} (expert low), the config says {folder} (expert high)"
  with pytest.raises(ValueError, match=re.escape(started)):
    loop.train(resume, workdir)
  with pytest.raises(ValueError, match=r"the config says a random init \(train.init_from=''\)"):
    loop.train(_config("steps=2"), workdir)
  assert sorted((str(p), p.stat().st_mtime_ns) for p in workdir.rglob("*")) == before


def _cli(workdir, *overrides):
  argv = ["--config", "configs/tiny.py:steps=1", "--workdir", str(workdir)]
  return train.main([*argv, *(a for o in overrides for a in ("--set", o))])


def test_another_architecture_is_one_error_naming_every_field(tmp_path, monkeypatch):
  monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  other = DiTConfig.from_config(_config().model)
  other = dataclasses.replace(other, num_layers=3, ffn_dim=48, scan_layers=False)
  os.makedirs(tmp_path / "other")
  entry = dict(kind="dit", config=dataclasses.asdict(other))  # the arrays are never read
  (tmp_path / "other" / store.RECORD).write_text(json.dumps(dict(components=dict(high=entry))))
  workdir = tmp_path / "run"
  fields = r"model.num_layers=3 \(config: 2\), model.ffn_dim=48 \(config: 64\), model.scan_layers"
  with pytest.raises(ValueError, match=f"has another architecture: {fields}"):
    _cli(workdir, f"train.init_from={tmp_path / 'other'}")
  assert not workdir.exists()
  with pytest.raises(ValueError, match=fields):
    loop.train(_config(init_from=str(tmp_path / "other")), workdir)
  assert not workdir.exists()


def test_expert_choice_errors(converted, tmp_path):
  folder, _ = converted
  with pytest.raises(ValueError, match="with train.expert=all set train.init_expert=high or low"):
    loop.train(_config(init_from=folder), tmp_path)
  with pytest.raises(ValueError, match="train.init_expert must be one of"):
    loop.train(_config(init_from=folder, init_expert="mid"), tmp_path)
  with pytest.raises(ValueError, match="train.init_expert='low' names an expert of train.init_"):
    loop.train(_config(init_expert="low"), tmp_path)
  with pytest.raises(ValueError, match="the step after '@' must be an integer"):
    loop.train(_config(init_from=f"{folder}@x"), tmp_path)
  assert not os.listdir(tmp_path)


def test_fingerprint_is_exact_and_sharding_free():
  x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": -1})
  spread = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp")))
  tree = {"a": x, "b": np.int8(3)}
  assert store.fingerprint({"a": spread, "b": np.int8(3)}) == store.fingerprint(tree)
  flipped = x.copy()
  flipped.view(np.uint32)[1, 2, 3] ^= 1  # one bit
  assert store.fingerprint({"a": flipped, "b": np.int8(3)}) != store.fingerprint(tree)
  swapped = x.copy()
  swapped[0, 0, :2] = swapped[0, 0, 1::-1]  # same values, other places
  assert store.fingerprint({"a": swapped, "b": np.int8(3)}) != store.fingerprint(tree)
