"""Synthetic data, shape buckets, per-host rows, iterator state, global batch assembly."""

import functools

import grain
import jax
import numpy as np
import pytest

from configs import tiny
from holocine_jax import layout, sharding, toy_text
from holocine_jax.training import global_batch, pipeline, records, synthetic


def _source(n=64, frames=(13, 17)):
  return synthetic.SyntheticSource(
    num_samples=n, frame_choices=frames, height=8, width=8, channels=4, text_dim=24, max_shots=3
  )


def _collate():
  return functools.partial(
    records.collate, patch=(1, 2, 2), max_shots=3, max_shot_frames=5, text_len=32
  )


def _bucket_collate(samples, key):
  return _collate()(samples, num_frames=key[0])


def test_synthetic_record_matches_its_captions():
  source = _source()
  a, b = source[5], source[5]
  np.testing.assert_array_equal(a["latents"], b["latents"])
  scene, shots, _ = source.scene(5)
  assert a["prompt"] == scene.prompt()
  assert a["latents"].shape == (scene.num_latent_frames, 8, 8, 4) == (*source.latent_shape(5), 4)
  assert len(a["latent_bounds"]) == scene.num_shots + 1 == len(a["text_ranges"])
  tokens = toy_text.toy_tokenize(a["prompt"])
  for (start, end), (colour, shape, motion) in zip(a["text_ranges"][1:], shots, strict=True):
    assert f"a {colour} {shape} {motion}" in " ".join(tokens[start:end])
  # A moving shape changes the latents frame to frame; a still one does not.
  lo, hi = a["latent_bounds"][:2]
  moved = not np.allclose(a["latents"][lo], a["latents"][hi - 1])
  assert moved == (shots[0][2] != "standing still" and hi - lo > 1)


def test_toy_windows_follow_holocine_ranges():
  tokens = toy_text.toy_tokenize(
    "[global caption] G g. This scene contains 2 shots. [per shot caption] a b [shot cut] c"
  )
  ranges = toy_text.toy_windows(tokens).tolist()
  # global: up to the shots marker; shot 0 through the END of the first cut; last to the end.
  assert ranges == [[0, 8], [8, 12], [12, 13]]


def test_buckets_one_shape_per_batch_and_each_sample_once_per_epoch():
  source = _source()
  shapes = [source.latent_shape(i) for i in range(len(source))]
  plan = pipeline.BucketPlan(shapes, 4, seed=0)
  bucket, epoch = plan.epoch(0)
  assert epoch.shape == (plan.batches_per_epoch, 4) and bucket.shape == (plan.batches_per_epoch,)
  assert len(set(epoch.ravel())) == epoch.size
  for k, batch in zip(bucket, epoch, strict=True):
    assert {shapes[i] for i in batch} == {plan.keys[k]}
  assert not np.array_equal(plan.epoch(1)[1], epoch)
  assert set(map(tuple, shapes)) == {(4, 8, 8), (5, 8, 8)}


def test_hosts_see_disjoint_rows_and_state_round_trips():
  source = _source()
  plan = pipeline.BucketPlan([source.latent_shape(i) for i in range(len(source))], 4, seed=0)
  options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)
  host0 = iter(pipeline.dataset(source, plan, (0, 2), _bucket_collate, options))
  host1 = iter(pipeline.dataset(source, plan, (2, 4), _bucket_collate, options))
  seen0, seen1 = set(), set()
  for i in range(plan.batches_per_epoch):
    b0, b1 = next(host0), next(host1)
    assert b0["latents"].shape == b1["latents"].shape  # same bucket on every host
    np.testing.assert_array_equal(np.concatenate([b0["index"], b1["index"]]), plan.batch(i)[1])
    seen0.update(b0["index"].tolist())
    seen1.update(b1["index"].tolist())
  assert not seen0 & seen1
  state = host0.get_state()
  after = [next(host0)["index"] for _ in range(3)]
  fresh = iter(pipeline.dataset(source, plan, (0, 2), _bucket_collate, options))
  fresh.set_state(state)
  for want in after:
    np.testing.assert_array_equal(next(fresh)["index"], want)


def test_collate_pads_shots_and_text_and_rejects_mixed_shapes():
  source = _source()
  shapes = [source.latent_shape(i) for i in range(len(source))]
  i5 = [i for i, s in enumerate(shapes) if s[0] == 5][:2]
  i4 = [i for i, s in enumerate(shapes) if s[0] == 4][0]
  batch = _collate()([source[i] for i in i5])
  assert batch["latents"].shape == (2, 5, 8, 8, 4)
  assert batch["context"].shape == (2, 32, 24)
  assert batch["shots"].shot_bounds_BxNx2.shape == (2, 3, 2)
  assert batch["shots"].text_allow_BxNxT.shape == (2, 3, 32)
  assert batch["frame_mask"].shape == (2, 5) and batch["frame_mask"].all()
  n = source[i5[0]]["context"].shape[0]
  assert not batch["context"][0, n:].any()
  with pytest.raises(layout.LayoutError, match="one latent shape"):
    _collate()([source[i5[0]], source[i4]])


def test_global_batch_assembly_on_a_mesh():
  config = tiny.get_config("")
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, context=2, tensor=1))
  rules = config.logical_rules
  rows = global_batch.host_rows(mesh, rules, 4)
  assert rows == (0, 4)  # one process holds every row
  source = _source()
  idx = [i for i in range(len(source)) if source.latent_shape(i)[0] == 5][:4]
  host = _collate()([source[i] for i in idx])
  shardings = global_batch.shardings(host, mesh, rules)
  batch = global_batch.to_global(host, shardings, 4, rows)
  assert batch["latents"].sharding.spec[0] == ("data", "fsdp")
  assert batch["shots"].shot_id_BxL.sharding.spec[1] == "context"
  assert {s.data.shape for s in batch["shots"].shot_id_BxL.addressable_shards} == {(1, 40)}
  for got, want in zip(jax.tree.leaves(batch), jax.tree.leaves(host), strict=True):
    np.testing.assert_array_equal(np.asarray(got), want)
