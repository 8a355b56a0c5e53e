"""The grain input pipeline: shape buckets, per-epoch shuffling, per-host rows, host batches.

Samples are bucketed by latent shape (equal token counts batch without padding); each epoch
shuffles every bucket, cuts it into global batches (dropping the remainder), and shuffles the
batch order. Element i of the pipeline is global batch i, a pure function of (seed, i): each host
reads only its rows of it, every host sees the same bucket (same shapes) at the same step, and
the iterator state is just a position, so checkpoints restore the exact stream.
"""

import functools
from collections.abc import Callable, Sequence

import grain
import numpy as np

from holocine_jax.training import records


class BucketPlan:
  """Global batches of sample indices, shape-bucketed and reshuffled every epoch."""

  def __init__(self, shapes: Sequence[tuple[int, ...]], global_batch: int, seed: int):
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
      by_shape.setdefault(tuple(shape), []).append(i)
    self.buckets = [np.asarray(v, np.int64) for _, v in sorted(by_shape.items())]
    self.global_batch, self.seed = global_batch, seed
    self.batches_per_epoch = sum(len(b) // global_batch for b in self.buckets)
    if self.batches_per_epoch == 0:
      sizes = {k: len(v) for k, v in sorted(by_shape.items())}
      raise ValueError(
        f"no bucket holds a full global batch of {global_batch}; bucket sizes {sizes}"
      )

  @functools.lru_cache(maxsize=2)  # noqa: B019 (a plan lives as long as its pipeline)
  def epoch(self, epoch: int) -> np.ndarray:
    """[batches_per_epoch, global_batch] sample indices of one epoch."""
    rng = np.random.default_rng([self.seed, epoch])
    batches = []
    for bucket in self.buckets:
      perm = rng.permutation(bucket)
      n = len(perm) // self.global_batch
      batches.append(perm[: n * self.global_batch].reshape(n, self.global_batch))
    batches = np.concatenate(batches)
    return batches[rng.permutation(len(batches))]

  def batch(self, i: int) -> np.ndarray:
    epoch, j = divmod(i, self.batches_per_epoch)
    return self.epoch(epoch)[j]


def dataset(
  source,
  plan: BucketPlan,
  rows: tuple[int, int],
  collate: Callable[[list[dict]], dict],
  read_options: grain.ReadOptions | None = None,
) -> grain.IterDataset:
  """Endless iterable of this host's batches: rows [lo, hi) of every global batch, collated."""
  lo, hi = rows

  def load(i: int, _) -> dict:
    indices = plan.batch(i)[lo:hi]
    batch = collate([source[int(k)] for k in indices])
    batch["index"] = indices
    return batch

  ds = grain.MapDataset.range(plan.batches_per_epoch).repeat(None).map_with_index(load)
  return ds.to_iter_dataset(read_options)


def from_config(source, shapes, config, rows: tuple[int, int]) -> grain.IterDataset:
  """The training pipeline for a source with known per-sample latent shapes."""
  data, model = config.data, config.model
  plan = BucketPlan(shapes, config.train.global_batch, data.seed)
  collate = functools.partial(
    records.collate,
    patch=model.patch_size,
    max_shots=data.max_shots,
    max_shot_frames=data.max_shot_frames,
    text_len=data.text_len,
  )
  options = grain.ReadOptions(num_threads=data.num_threads, prefetch_buffer_size=data.prefetch)
  return dataset(source, plan, rows, collate, options)
