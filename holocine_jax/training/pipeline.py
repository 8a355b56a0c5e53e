"""The grain input pipeline: shape buckets, per-epoch shuffling, per-host rows, host batches.

Samples are bucketed by latent shape (equal token counts batch without padding); each epoch
shuffles every bucket, cuts it into global batches (dropping the remainder), and shuffles the
batch order. Element i of the pipeline is global batch i, a pure function of (seed, i): each host
reads only its rows of it, every host sees the same bucket (same shapes) at the same step, and
the iterator state is just a position, so checkpoints restore the exact stream. The static shot
bound every batch is padded to comes from dataset-wide information (`shot_bound`), so it agrees
across hosts and steps.
"""

import functools
from collections.abc import Callable, Sequence

import grain
import jax
import numpy as np

from holocine_jax.training import records, synthetic


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


def shot_extent(config) -> tuple[int, int] | None:
  """(longest shot, longest clip) in latent frames over the dataset `config.data` names (None: a
  tfds dataset written without shot lengths)."""
  data = config.data
  if data.source == "synthetic":
    return synthetic.SyntheticSource.from_config(data, config.model).shot_extent()
  if data.source == "tfds":
    from holocine_jax.training import dataset

    return dataset.shot_extent(data.data_dir, data.split)
  raise ValueError(f"data.source must be 'synthetic' or 'tfds', got {data.source!r}")


def shot_bound(config) -> int:
  """The training job's static shot bound in latent frames, equal on every host: an explicit
  `data.max_shot_frames` (checked against the dataset), or with 0 the dataset's longest shot
  through `records.round_shot_bound`."""
  requested = config.data.max_shot_frames
  if requested < 0:
    raise ValueError(
      f"data.max_shot_frames must be >= 0 (0: derive from the data), got {requested}"
    )
  extent = shot_extent(config)
  if requested == 0:
    if extent is None:
      raise ValueError(
        f"data.max_shot_frames=0 derives the bound from the dataset, but {config.data.data_dir!r} "
        "was written without shot lengths (before HoloCineShots 1.1.0); rebuild it with "
        "holocine_jax.training.preprocess or set data.max_shot_frames"
      )
    bound = records.round_shot_bound(*extent)
    if jax.process_index() == 0:
      print(
        f"data.max_shot_frames=0: shots bounded by {bound} latent frames (longest shot "
        f"{extent[0]}, longest clip {extent[1]})",
        flush=True,
      )
    return bound
  if extent is not None and extent[0] > requested:
    raise ValueError(
      f"data.max_shot_frames={requested} but the dataset has a shot of {extent[0]} latent frames; "
      "raise it, or set 0 to derive it from the data"
    )
  return requested


def from_config(source, shapes, config, rows: tuple[int, int]) -> grain.IterDataset:
  """The training pipeline for a source with known per-sample latent shapes."""
  data, model = config.data, config.model
  plan = BucketPlan(shapes, config.train.global_batch, data.seed)
  collate = functools.partial(
    records.collate,
    patch=model.patch_size,
    max_shots=data.max_shots,
    max_shot_frames=shot_bound(config),
    text_len=data.text_len,
  )
  options = grain.ReadOptions(num_threads=data.num_threads, prefetch_buffer_size=data.prefetch)
  return dataset(source, plan, rows, collate, options)
