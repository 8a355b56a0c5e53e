"""The multi-shot training set as a tfds dataset in ArrayRecord files (no TensorFlow needed).

Records of the `records` schema (latents and text embeddings stored as float16) are written in
shards, `<data_dir>/holo_cine_shots/<VERSION>/holo_cine_shots-<split>.array_record-0000k-of-0000n`,
each written on its own (by any host, atomically: a temp name renamed when complete), in record
order (grain shuffles). `write_info` then makes the shards one tfds dataset: `dataset_info.json`
(shard lengths), `features.json` and the metadata (every example's latent shape and longest shot,
so the pipeline buckets and bounds shot lengths without reading records, and since 1.2.0 the
manifest line it came from). `open_source` reads a split back as a random-access source for
grain (`tfds.builder_from_directory(...).as_data_source`).
Legend: F latent frames, H/W latent height/width, C latent channels, N prompt tokens, E text dim.
"""

import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from tensorflow_datasets.core import naming
from tensorflow_datasets.core import splits as splits_lib

from holocine_jax import files

NAME = "holo_cine_shots"
VERSION = "1.2.0"
RELEASE_NOTES = {
  "1.0.0": "latents, context, latent_bounds, text_ranges, prompt",
  "1.1.0": "metadata: every example's longest shot (latent frames)",
  "1.2.0": "shards written per host by preprocess; metadata: every example's manifest line",
}
SHAPES_KEY = "latent_shapes"
SHOTS_KEY = "longest_shots"  # since 1.1.0: each example's longest shot in latent frames
LINES_KEY = "manifest_lines"  # since 1.2.0: each example's manifest line (0: not from one)


def features(latent_channels: int, text_dim: int) -> tfds.features.FeaturesDict:
  tensor = lambda shape, dtype: tfds.features.Tensor(
    shape=shape, dtype=dtype, encoding=tfds.features.Encoding.ZLIB
  )
  return tfds.features.FeaturesDict(
    {
      "latents": tensor((None, None, None, latent_channels), np.float16),
      "context": tensor((None, text_dim), np.float16),
      "latent_bounds": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "text_ranges": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
      "prompt": tfds.features.Text(),
    }
  )


def output_dir(data_dir) -> str:
  """The version folder this code writes: `<data_dir>/holo_cine_shots/<VERSION>`."""
  return os.path.join(os.fspath(data_dir), NAME, VERSION)


def _template(version_dir: str, split: str) -> naming.ShardedFileTemplate:
  return naming.ShardedFileTemplate(
    data_dir=version_dir,
    template=naming.DEFAULT_FILENAME_TEMPLATE,
    dataset_name=NAME,
    split=split,
    filetype_suffix="array_record",
  )


def shard_path(version_dir: str, split: str, index: int, num_shards: int) -> str:
  return os.fspath(
    _template(version_dir, split).sharded_filepath(shard_index=index, num_shards=num_shards)
  )


def write_shard(path: str, records: Iterable[dict], latent_channels: int, text_dim: int) -> dict:
  """Writes one ArrayRecord shard atomically; returns its stats for `write_info`: examples,
  num_bytes, every example's latent shape and longest shot."""
  feats = features(latent_channels, text_dim)
  shapes, shots = [], []
  with files.atomic_path(path) as tmp:
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    try:
      for r in records:
        shapes.append(list(r["latents"].shape[:3]))
        shots.append(int(np.diff(r["latent_bounds"]).max()))
        example = dict(
          latents=np.asarray(r["latents"], np.float16),
          context=np.asarray(r["context"], np.float16),
          latent_bounds=np.asarray(r["latent_bounds"], np.int32),
          text_ranges=np.asarray(r["text_ranges"], np.int32),
          prompt=r.get("prompt", ""),
        )
        writer.write(feats.serialize_example(example))
    finally:
      writer.close()
    num_bytes = os.path.getsize(tmp)
  return dict(examples=len(shapes), num_bytes=num_bytes, shapes=shapes, longest_shots=shots)


def write_info(
  version_dir: str, shards: dict[str, list[dict]], *, latent_channels: int, text_dim: int
) -> None:
  """Makes the shards of every split one tfds dataset: `shards[split]` lists the stats of its
  shards in order (`write_shard`'s, with `lines` where they came from a manifest). The files are
  renamed into place with `dataset_info.json` last, so a reader sees a complete dataset or none."""
  meta = {SHAPES_KEY: {}, SHOTS_KEY: {}, LINES_KEY: {}}
  split_infos = []
  for split, stats in shards.items():
    meta[SHAPES_KEY][split] = [s for st in stats for s in st["shapes"]]
    meta[SHOTS_KEY][split] = [s for st in stats for s in st["longest_shots"]]
    meta[LINES_KEY][split] = [n for st in stats for n in st.get("lines", [0] * st["examples"])]
    split_infos.append(
      splits_lib.SplitInfo(
        name=split,
        shard_lengths=[st["examples"] for st in stats],
        num_bytes=sum(st["num_bytes"] for st in stats),
        filename_template=_template(version_dir, split),
      )
    )
  identity = tfds.core.dataset_info.DatasetIdentity(
    name=NAME,
    version=tfds.core.Version(VERSION),
    data_dir=version_dir,
    module_name=__name__,
    release_notes=RELEASE_NOTES,
  )
  info = tfds.core.DatasetInfo(
    builder=identity,
    features=features(latent_channels, text_dim),
    disable_shuffling=True,
    metadata=tfds.core.MetadataDict(meta),
  )
  info.set_file_format("array_record")
  info.set_splits(splits_lib.SplitDict(split_infos))
  tmp = tempfile.mkdtemp(prefix=".info.", dir=version_dir)
  try:
    info.write_to_directory(tmp)
    names = sorted(os.listdir(tmp), key=lambda n: n == "dataset_info.json")
    for name in names:
      os.replace(os.path.join(tmp, name), os.path.join(version_dir, name))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def build(
  data_dir,
  examples: Callable[[str], Iterable[dict]],
  *,
  splits=("train",),
  latent_channels: int,
  text_dim: int,
) -> str:
  """Writes `examples(split)` for every split as one shard each; returns the version folder."""
  version_dir = output_dir(data_dir)
  os.makedirs(version_dir, exist_ok=True)
  dims = dict(latent_channels=latent_channels, text_dim=text_dim)
  shards = {s: [write_shard(shard_path(version_dir, s, 0, 1), examples(s), **dims)] for s in splits}
  write_info(version_dir, shards, **dims)
  return version_dir


def version_dir(data_dir) -> str:
  """The newest `holo_cine_shots/<version>` folder under `data_dir` (or data_dir itself)."""
  data_dir = os.fspath(data_dir)
  if os.path.exists(os.path.join(data_dir, "dataset_info.json")):
    return data_dir
  found = sorted(glob.glob(os.path.join(data_dir, NAME, "*", "dataset_info.json")))
  if not found:
    partial = glob.glob(os.path.join(data_dir, NAME, "*", f"{NAME}-*"))
    hint = " (shards but no dataset_info.json: preprocessing has not finished)" if partial else ""
    raise FileNotFoundError(f"no {NAME} dataset under {data_dir!r}{hint}")
  return os.path.dirname(found[-1])


def _builder(data_dir, split: str):
  """The dataset's tfds builder, after checking that `split` exists and holds records."""
  builder = tfds.builder_from_directory(version_dir(data_dir))
  where = f"the dataset in data.data_dir={os.fspath(data_dir)!r}"
  if split not in builder.info.splits:
    raise ValueError(
      f"data.split={split!r} is not a split of {where}; it has {sorted(builder.info.splits)}"
    )
  if builder.info.splits[split].num_examples == 0:
    raise ValueError(
      f"data.split={split!r} of {where} has 0 records (preprocessing skipped every "
      "line? see its summary); point data.data_dir at a dataset with records"
    )
  return builder


def open_source(data_dir, split: str = "train"):
  """(grain-compatible random-access source, per-example latent shapes) of one split."""
  builder = _builder(data_dir, split)
  shapes = [tuple(s) for s in builder.info.metadata[SHAPES_KEY][split]]
  source = builder.as_data_source(split)
  if len(source) != len(shapes):
    raise ValueError(f"{len(source)} records but {len(shapes)} shapes in the metadata")
  return source, shapes


def longest_shots(data_dir, split: str = "train") -> list[int] | None:
  """Every example's longest shot in latent frames, from the metadata alone; None for a dataset
  written before 1.1.0 (no shot lengths stored)."""
  metadata = _builder(data_dir, split).info.metadata
  if SHOTS_KEY not in metadata:
    return None
  return [int(n) for n in metadata[SHOTS_KEY][split]]
