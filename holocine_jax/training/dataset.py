"""The multi-shot training set as a tfds dataset in ArrayRecord files (no TensorFlow needed).

`HoloCineShots` writes records of the `records` schema (latents and text embeddings stored as
float16) from an injected example generator, in generation order (grain shuffles), and keeps
every example's latent shape and longest shot in the dataset metadata, so the pipeline buckets
and bounds shot lengths without reading records. `open_source` reads a split back as a
random-access source for grain.
Legend: F latent frames, H/W latent height/width, C latent channels, N prompt tokens, E text dim.
"""

import glob
import os
from collections.abc import Callable, Iterable

import numpy as np
import tensorflow_datasets as tfds

SHAPES_KEY = "latent_shapes"
SHOTS_KEY = "longest_shots"  # since 1.1.0: each example's longest shot in latent frames


class HoloCineShots(tfds.core.GeneratorBasedBuilder):
  """Multi-shot video latents + scene + text embeddings; examples come from `examples(split)`."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "latents, context, latent_bounds, text_ranges, prompt",
    "1.1.0": "metadata: every example's longest shot (latent frames)",
  }

  def __init__(
    self,
    *,
    examples: Callable[[str], Iterable[dict]] | None = None,
    splits: tuple[str, ...] = ("train",),
    latent_channels: int = 16,
    text_dim: int = 4096,
    **kwargs,
  ):
    self._examples, self._splits = examples, splits
    self._channels, self._text_dim = latent_channels, text_dim
    super().__init__(file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    tensor = lambda shape, dtype: tfds.features.Tensor(
      shape=shape, dtype=dtype, encoding=tfds.features.Encoding.ZLIB
    )
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "latents": tensor((None, None, None, self._channels), np.float16),
          "context": tensor((None, self._text_dim), np.float16),
          "latent_bounds": tfds.features.Tensor(shape=(None,), dtype=np.int32),
          "text_ranges": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
          "prompt": tfds.features.Text(),
        }
      ),
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict({SHAPES_KEY: {}, SHOTS_KEY: {}}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    if self._examples is None:
      raise ValueError("HoloCineShots needs `examples` to build; read with open_source()")
    return {split: self._generate_examples(split) for split in self._splits}

  def _generate_examples(self, split):
    shapes = self.info.metadata[SHAPES_KEY].setdefault(split, [])
    shots = self.info.metadata[SHOTS_KEY].setdefault(split, [])
    for i, ex in enumerate(self._examples(split)):
      shapes.append(list(ex["latents"].shape[:3]))
      shots.append(int(np.diff(ex["latent_bounds"]).max()))
      yield (
        i,
        dict(
          latents=np.asarray(ex["latents"], np.float16),
          context=np.asarray(ex["context"], np.float16),
          latent_bounds=np.asarray(ex["latent_bounds"], np.int32),
          text_ranges=np.asarray(ex["text_ranges"], np.int32),
          prompt=ex.get("prompt", ""),
        ),
      )


def build(data_dir, examples, *, splits=("train",), latent_channels: int, text_dim: int) -> str:
  """Writes the dataset under `data_dir`; returns the version folder."""
  builder = HoloCineShots(
    examples=examples,
    splits=splits,
    latent_channels=latent_channels,
    text_dim=text_dim,
    data_dir=os.fspath(data_dir),
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
  )
  return os.fspath(builder.data_dir)


def version_dir(data_dir) -> str:
  """The newest `holo_cine_shots/<version>` folder under `data_dir` (or data_dir itself)."""
  data_dir = os.fspath(data_dir)
  if os.path.exists(os.path.join(data_dir, "dataset_info.json")):
    return data_dir
  found = sorted(glob.glob(os.path.join(data_dir, HoloCineShots.name, "*", "dataset_info.json")))
  if not found:
    raise FileNotFoundError(f"no {HoloCineShots.name} dataset under {data_dir!r}")
  return os.path.dirname(found[-1])


def open_source(data_dir, split: str = "train"):
  """(grain-compatible random-access source, per-example latent shapes) of one split."""
  builder = tfds.builder_from_directory(version_dir(data_dir))
  shapes = [tuple(s) for s in builder.info.metadata[SHAPES_KEY][split]]
  source = builder.as_data_source(split)
  if len(source) != len(shapes):
    raise ValueError(f"{len(source)} records but {len(shapes)} shapes in the metadata")
  return source, shapes


def shot_extent(data_dir, split: str = "train") -> tuple[int, int] | None:
  """(longest shot, longest clip) in latent frames over a split, from the metadata alone; None
  for a dataset written before 1.1.0 (no shot lengths stored)."""
  metadata = tfds.builder_from_directory(version_dir(data_dir)).info.metadata
  if SHOTS_KEY not in metadata:
    return None
  return max(metadata[SHOTS_KEY][split]), max(s[0] for s in metadata[SHAPES_KEY][split])
