"""The grain input pipeline: shape buckets, per-epoch shuffling, per-host rows, host batches.

A sample's bucket is its latent shape (F, H, W), or with `data.buckets` (latent frame counts)
the smallest bucket length >= F at the same H, W: shorter clips are padded at the end with zero
latents whose tokens belong to no shot and whose frames `frame_mask` keeps out of the loss. Each
epoch shuffles every bucket, cuts it into global batches (dropping the remainder), and shuffles
the batch order; a bucket smaller than one global batch is never trained (`bucket_report` warns).
Element i of the pipeline is global batch i, a pure function of (seed, i) and the dataset-wide
bucket of every sample: each host reads only its rows of it, every host sees the same bucket (same
shapes: one compile per bucket) at the same step, and the iterator state is just a position, so
checkpoints restore the exact stream. Each bucket's static shot bound comes
from the longest shot of its samples (`shot_bounds`), dataset-wide as well.
"""

import functools
from collections.abc import Callable, Sequence

import grain
import jax
import numpy as np

from holocine_jax import layout
from holocine_jax.training import records, synthetic

Bucket = tuple[int, int, int]  # (latent frames, latent height, latent width)


def bucket_keys(shapes: Sequence[tuple[int, ...]], buckets: Sequence[int]) -> list[Bucket]:
  """Every sample's bucket: its latent shape, or the smallest of `buckets` (latent frames) that
  holds it at its height and width."""
  shapes = [tuple(int(x) for x in s[:3]) for s in shapes]
  if not buckets:
    return shapes
  if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in buckets):
    raise ValueError(f"data.buckets must be latent frame counts >= 1, got {tuple(buckets)}")
  lengths = np.sort(np.asarray(buckets, np.int64))
  frames = np.asarray([s[0] for s in shapes], np.int64)
  slot = np.searchsorted(lengths, frames)
  if len(frames) and slot.max() == len(lengths):
    over = frames[slot == len(lengths)]
    raise ValueError(
      f"{len(over)} samples are longer than the largest bucket of data.buckets={tuple(buckets)} "
      f"(up to {over.max()} latent frames); add a bucket that holds them"
    )
  return [(int(lengths[i]), h, w) for i, (_, h, w) in zip(slot, shapes, strict=True)]


class BucketPlan:
  """Global batches of sample indices, one bucket per batch, reshuffled every epoch."""

  def __init__(self, keys: Sequence[Bucket], global_batch: int, seed: int):
    by_key: dict[Bucket, list[int]] = {}
    for i, key in enumerate(keys):
      by_key.setdefault(tuple(key), []).append(i)
    self.keys = sorted(by_key)
    self.buckets = [np.asarray(by_key[k], np.int64) for k in self.keys]
    self.global_batch, self.seed = global_batch, seed
    self.batches_per_epoch = sum(len(b) // global_batch for b in self.buckets)
    if self.batches_per_epoch == 0:
      sizes = {k: len(v) for k, v in sorted(by_key.items())}
      raise ValueError(
        f"no bucket holds a full global batch (train.global_batch={global_batch}); bucket "
        f"sizes {sizes}: lower train.global_batch"
      )

  @functools.lru_cache(maxsize=2)  # noqa: B019 (a plan lives as long as its pipeline)
  def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket [N] (index into `keys`), sample indices [N, global_batch]) of one epoch's N
    batches."""
    rng = np.random.default_rng([self.seed, epoch])
    bucket_N, batches = [], []
    for k, bucket in enumerate(self.buckets):
      perm = rng.permutation(bucket)
      n = len(perm) // self.global_batch
      bucket_N.append(np.full(n, k, np.int64))
      batches.append(perm[: n * self.global_batch].reshape(n, self.global_batch))
    order = rng.permutation(self.batches_per_epoch)
    return np.concatenate(bucket_N)[order], np.concatenate(batches)[order]

  def batch(self, i: int) -> tuple[Bucket, np.ndarray]:
    """(bucket, sample indices [global_batch]) of global batch i."""
    epoch, j = divmod(i, self.batches_per_epoch)
    bucket_N, indices_NxG = self.epoch(epoch)
    return self.keys[bucket_N[j]], indices_NxG[j]


def dataset(
  source,
  plan: BucketPlan,
  rows: tuple[int, int],
  collate: Callable[[list[dict], Bucket], dict],
  read_options: grain.ReadOptions | None = None,
) -> grain.IterDataset:
  """Endless iterable of this host's batches: rows [lo, hi) of every global batch, collated into
  the batch's bucket."""
  lo, hi = rows

  def load(i: int, _) -> dict:
    key, indices = plan.batch(i)
    batch = collate([source[int(k)] for k in indices[lo:hi]], key)
    batch["index"] = indices[lo:hi]
    return batch

  ds = grain.MapDataset.range(plan.batches_per_epoch).repeat(None).map_with_index(load)
  return ds.to_iter_dataset(read_options)


def longest_shots(config) -> list[int] | None:
  """Every sample's longest shot in latent frames over the dataset `config.data` names (None: a
  tfds dataset written without shot lengths)."""
  data = config.data
  if data.source == "synthetic":
    return synthetic.SyntheticSource.from_config(data, config.model).longest_shots()
  if data.source == "tfds":
    from holocine_jax.training import dataset as dataset_lib  # noqa: PLC0415  (needs tfds)

    return dataset_lib.longest_shots(data.data_dir, data.split)
  raise ValueError(f"data.source must be 'synthetic' or 'tfds', got {data.source!r}")


def shot_bounds(config, keys: Sequence[Bucket]) -> dict[Bucket, int]:
  """Each bucket's static shot bound in latent frames, equal on every host: an explicit
  `data.max_shot_frames` (checked against the dataset), or with 0 the longest shot of the
  bucket's samples through `layout.round_shot_bound`."""
  requested = config.data.max_shot_frames
  if requested < 0:
    raise ValueError(
      f"data.max_shot_frames must be >= 0 (0: derive from the data), got {requested}"
    )
  longest = longest_shots(config)
  if longest is None:
    if requested == 0:
      raise ValueError(
        f"data.max_shot_frames=0 derives the bound from the dataset, but {config.data.data_dir!r} "
        "was written without shot lengths (before HoloCineShots 1.1.0); rebuild it with "
        "holocine_jax.training.preprocess or set data.max_shot_frames"
      )
    return dict.fromkeys(keys, requested)
  if len(longest) != len(keys):
    raise ValueError(f"{len(longest)} shot lengths for {len(keys)} samples")
  per_bucket: dict[Bucket, int] = {}
  for key, n in zip(keys, longest, strict=True):
    per_bucket[key] = max(per_bucket.get(key, 0), int(n))
  if requested == 0:
    return {k: layout.round_shot_bound(n, k[0]) for k, n in per_bucket.items()}
  if max(longest) > requested:
    raise ValueError(
      f"data.max_shot_frames={requested} but the dataset has a shot of {max(longest)} latent "
      "frames; raise it, or set 0 to derive it from the data"
    )
  return dict.fromkeys(per_bucket, requested)


def bucket_report(plan: BucketPlan, padded: Sequence[bool], bounds: dict[Bucket, int]) -> list[str]:
  """One line per bucket: samples, padded ones, batches per epoch and shot bound; a bucket with
  fewer samples than the global batch is never trained, and its line is a warning saying so."""
  lines = []
  for key, bucket in zip(plan.keys, plan.buckets, strict=True):
    name = f"bucket {'x'.join(map(str, key))} latents: {len(bucket)} samples"
    name += f" ({sum(padded[i] for i in bucket)} padded)"
    if len(bucket) < plan.global_batch:
      lines.append(
        f"warning: {name} are never trained: fewer than train.global_batch={plan.global_batch} "
        "(lower train.global_batch, or let data.buckets pad them into a fuller bucket)"
      )
      continue
    lines.append(
      f"{name}, {len(bucket) // plan.global_batch} batches per epoch, shots bounded by "
      f"{bounds[key]} latent frames"
    )
  return lines


def _collate_bucket(samples: list[dict], key: Bucket, *, bounds: dict[Bucket, int], **kwargs):
  return records.collate(samples, max_shot_frames=bounds[key], num_frames=key[0], **kwargs)


def from_config(source, shapes, config, rows: tuple[int, int]) -> grain.IterDataset:
  """The training pipeline for a source with known per-sample latent shapes."""
  data, model = config.data, config.model
  keys = bucket_keys(shapes, data.buckets)
  plan = BucketPlan(keys, config.train.global_batch, data.seed)
  padded = [s[0] < k[0] for s, k in zip(shapes, keys, strict=True)]
  bounds = shot_bounds(config, keys)
  if jax.process_index() == 0:
    print("\n".join(bucket_report(plan, padded, bounds)), flush=True)
  collate = functools.partial(
    _collate_bucket,
    bounds=bounds,
    patch=model.patch_size,
    max_shots=data.max_shots,
    text_len=data.text_len,
  )
  options = grain.ReadOptions(num_threads=data.num_threads, prefetch_buffer_size=data.prefetch)
  return dataset(source, plan, rows, collate, options)
