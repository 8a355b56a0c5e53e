"""Shape buckets with padding: padded frames add nothing to the loss or its gradient, every global
batch comes from one bucket, every host follows the same bucket schedule, resume continues it,
each bucket has its own shot bound, and no buckets keeps exact shapes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from configs import tiny
from holocine_jax import layout
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT, init_fn
from holocine_jax.training import loop, pipeline, records, synthetic
from holocine_jax.training import loss as loss_lib
from holocine_jax.training import step as step_lib
from tests import support

# 13 / 17 / 25 video frames = 4 / 5 / 7 latent frames: 4-frame clips are padded into bucket 5.
FRAMES, BUCKETS = (13, 17, 25), (5, 7)


def _config(arg="attention=sparse,impl=reference,samples=48,batch=4", buckets=BUCKETS):
  config = tiny.get_config(arg)
  config.data.update(frame_choices=FRAMES, buckets=buckets, max_shot_frames=0)
  config.train.update(progress_bar=False, tensorboard=False)
  return config


def _source(config):
  source = synthetic.SyntheticSource.from_config(config.data, config.model)
  return source, [source.latent_shape(i) for i in range(len(source))]


def _pipeline(config, rows=(0, 4)):
  source, shapes = _source(config)
  return iter(pipeline.from_config(source, shapes, config, rows))


def _collate(config, samples, num_frames=None):
  d = config.data
  return records.collate(
    samples, patch=config.model.patch_size, max_shots=d.max_shots, max_shot_frames=7,
    text_len=d.text_len, num_frames=num_frames,
  )  # fmt: skip


@pytest.mark.parametrize("attention", ["attention=sparse,impl=reference", "attention=full"])
def test_padded_frames_add_nothing_to_the_loss_or_gradient(attention):
  config = _config(f"{attention},samples=48,batch=4")
  source, shapes = _source(config)
  sample = source[next(i for i, s in enumerate(shapes) if s[0] == 4)]
  model = WanDiT(DiTConfig.from_config(config.model))
  params = {"params": meta.unbox(init_fn(model.config)(jax.random.key(0)))}
  fm = loss_lib.FlowMatching.from_config(config.train)

  def loss_fn(params, latents, batch):
    batch = dict(batch, latents=latents)
    return loss_lib.flow_matching_loss(model.apply, params, batch, jax.random.key(3), fm)[0]

  value_and_grad = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
  compiled = {}

  def loss_and_grads(batch):
    inputs = {k: batch[k] for k in ("context", "shots", "frame_mask")}
    args = (params, batch["latents"], inputs)
    shape = batch["latents"].shape
    if shape not in compiled:
      compiled[shape] = value_and_grad.lower(*args).compile(support.FAST_COMPILE)
    return compiled[shape](*args)

  exact = _collate(config, [sample])
  padded = _collate(config, [sample], num_frames=7)
  assert padded["latents"].shape[1] == 7 and padded["frame_mask"].tolist() == [[1] * 4 + [0] * 3]
  assert (np.asarray(padded["shots"].shot_id_BxL)[0, 4 * 16 :] == layout.PAD_SHOT_ID).all()
  loss0, (grads0, dx0) = loss_and_grads(exact)
  loss1, (grads1, dx1) = loss_and_grads(padded)
  np.testing.assert_allclose(loss1, loss0, rtol=1e-6)  # the unpadded clip's loss
  for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads0), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(dx1[:, :4], dx0, rtol=1e-4, atol=1e-8)
  assert not np.asarray(dx1[:, 4:]).any()  # exactly zero gradient into padding
  # Whatever the padding holds, loss and gradients are bit-identical.
  garbage = padded["latents"].copy()
  garbage[:, 4:] = np.random.default_rng(0).standard_normal(garbage[:, 4:].shape) * 100
  loss2, (grads2, _) = loss_and_grads(dict(padded, latents=garbage))
  assert float(loss2) == float(loss1)
  for a, b in zip(jax.tree.leaves(grads2), jax.tree.leaves(grads1), strict=True):
    np.testing.assert_array_equal(a, b)


def test_frame_noise_does_not_depend_on_the_clip_length():
  key = jax.random.key(5)
  long_BxFxHxWxC = loss_lib.frame_noise(key, (2, 7, 4, 4, 3))
  np.testing.assert_array_equal(long_BxFxHxWxC[:, :4], loss_lib.frame_noise(key, (2, 4, 4, 4, 3)))
  assert abs(float(long_BxFxHxWxC.std()) - 1) < 0.1


def test_each_global_batch_comes_from_one_bucket_with_its_shot_bound():
  config = _config()
  source, shapes = _source(config)
  keys = pipeline.bucket_keys(shapes, BUCKETS)
  plan = pipeline.BucketPlan(keys, 4, config.data.seed)
  bounds = pipeline.shot_bounds(config, keys)
  batches = _pipeline(config)
  seen_buckets, seen = set(), []
  for _ in range(plan.batches_per_epoch):
    batch = next(batches)
    frames = batch["latents"].shape[1]
    seen_buckets.add(frames)
    seen.extend(batch["index"].tolist())
    real = [shapes[i][0] for i in batch["index"]]
    assert all(keys[i] == (frames, 8, 8) for i in batch["index"])
    assert batch["frame_mask"].sum(1).tolist() == real
    assert batch["shots"].max_shot_frames == bounds[(frames, 8, 8)]
    shot_id_BxL = np.asarray(batch["shots"].shot_id_BxL)
    for row, n in enumerate(real):
      assert (shot_id_BxL[row, n * 16 :] == layout.PAD_SHOT_ID).all()
      assert (shot_id_BxL[row, : n * 16] >= 0).all()
      assert not batch["latents"][row, n:].any()
  assert seen_buckets == set(BUCKETS) and len(set(seen)) == len(seen)
  assert any(s[0] == 4 for s in shapes)  # some clips really are padded


def test_every_host_follows_the_same_bucket_schedule():
  config = _config()
  source, shapes = _source(config)
  plan = pipeline.BucketPlan(pipeline.bucket_keys(shapes, BUCKETS), 4, config.data.seed)
  host0, host1 = _pipeline(config, (0, 2)), _pipeline(config, (2, 4))
  schedule = []
  for i in range(2 * plan.batches_per_epoch):  # two epochs: reshuffled, still in step
    b0, b1 = next(host0), next(host1)
    assert b0["latents"].shape == b1["latents"].shape
    assert b0["shots"].max_shot_frames == b1["shots"].max_shot_frames
    key, indices = plan.batch(i)
    assert b0["latents"].shape[1] == key[0]
    np.testing.assert_array_equal(np.concatenate([b0["index"], b1["index"]]), indices)
    schedule.append(key[0])
  assert len(set(schedule)) == 2


def test_resume_mid_epoch_continues_the_bucket_sequence():
  config = _config()
  source, shapes = _source(config)
  plan = pipeline.BucketPlan(pipeline.bucket_keys(shapes, BUCKETS), 4, config.data.seed)
  batches = _pipeline(config)
  for _ in range(3):
    next(batches)
  state = json.loads(json.dumps(batches.get_state()))  # as the checkpoint stores it
  want = [next(batches) for _ in range(plan.batches_per_epoch)]  # into the next epoch
  resumed = _pipeline(config)
  resumed.set_state(state)
  for w in want:
    got = next(resumed)
    assert got["latents"].shape == w["latents"].shape
    np.testing.assert_array_equal(got["index"], w["index"])
    np.testing.assert_array_equal(got["frame_mask"], w["frame_mask"])


def test_shot_bounds_come_from_each_buckets_data():
  # 13 / 41 video frames = 4 / 11 latent frames; up to 2 shots.
  config = _config("attention=sparse,impl=reference,samples=64,batch=4", buckets=(4, 11))
  config.data.update(frame_choices=(13, 41), max_shots=2)
  source, shapes = _source(config)
  keys = pipeline.bucket_keys(shapes, (4, 11))
  longest = {}
  for i, key in enumerate(keys):
    longest[key] = max(longest.get(key, 0), max(np.diff(source.latent_bounds(i))))
  want = {k: layout.round_shot_bound(n, k[0]) for k, n in longest.items()}
  assert pipeline.shot_bounds(config, keys) == want
  assert want[(4, 8, 8)] == 4 < want[(11, 8, 8)]  # not one job-wide bound
  config.data.max_shot_frames = 11  # an explicit bound holds for every bucket
  assert pipeline.shot_bounds(config, keys) == {(4, 8, 8): 11, (11, 8, 8): 11}


def test_no_buckets_keeps_exact_shapes():
  config = _config("samples=48,batch=4", buckets=())
  _, shapes = _source(config)
  assert pipeline.bucket_keys(shapes, ()) == shapes
  batches = _pipeline(config)
  for _ in range(6):
    batch = next(batches)
    assert {shapes[i] for i in batch["index"]} == {batch["latents"].shape[1:4]}
    assert batch["frame_mask"].all() and (np.asarray(batch["shots"].shot_id_BxL) >= 0).all()
  # An all-true frame mask is the plain mean.
  x0 = jax.random.normal(jax.random.key(1), (2, 3, 4, 4, 4))
  batch = dict(latents=x0, context=jnp.zeros((2, 2, 8)), shots=None)
  fm = loss_lib.FlowMatching()
  zero_fn = lambda p, xt, *_: jnp.zeros_like(xt)
  loss, _ = loss_lib.flow_matching_loss(zero_fn, None, batch, jax.random.key(2), fm)
  noise = loss_lib.frame_noise(jax.random.split(jax.random.key(2))[1], x0.shape)
  np.testing.assert_allclose(loss, jnp.mean(jnp.square(noise - x0)), rtol=1e-6)
  masked, _ = loss_lib.flow_matching_loss(
    zero_fn, None, dict(batch, frame_mask=jnp.ones((2, 3), bool)), jax.random.key(2), fm
  )
  assert float(masked) == float(loss)


def test_bucket_errors():
  shapes = [(4, 8, 8), (7, 8, 8), (9, 8, 8)]
  with pytest.raises(ValueError, match=r"1 samples are longer than the largest bucket.*up to 9"):
    pipeline.bucket_keys(shapes, (5, 7))
  with pytest.raises(ValueError, match="latent frame counts >= 1"):
    pipeline.bucket_keys(shapes, (0, 9))
  assert pipeline.bucket_keys(shapes, (9, 4, 7)) == shapes  # lengths equal to buckets: no padding


def test_training_loop_compiles_once_per_bucket(monkeypatch, tmp_path):
  made, make = [], step_lib.make_train_step
  monkeypatch.setattr(
    step_lib, "make_train_step", lambda *a, **k: made.append(make(*a, **k)) or made[-1]
  )
  config = _config("attention=sparse,impl=reference,samples=48,batch=8,steps=5,ckpt_every=100")
  result = loop.train(config, tmp_path)
  assert sorted(result.losses) == [1, 2, 3, 4, 5]
  assert all(np.isfinite(list(result.losses.values())))
  source, shapes = _source(config)
  plan = pipeline.BucketPlan(pipeline.bucket_keys(shapes, BUCKETS), 8, config.data.seed)
  assert {plan.batch(i)[0][0] for i in range(5)} == set(BUCKETS)  # both buckets trained
  assert [fn.jitted._cache_size() for fn in made] == [1, 1]  # bounds 5 and 7: one compile each
