"""Encodes raw multi-shot videos + scene JSON into the tfds ArrayRecord training set.

Input: a JSON-lines file, one scene per line:
  {"video": "clips/0001.npy", "global_caption": "...", "shot_captions": ["...", "..."],
   "cut_frames": [37, 81]}          # optional; default evenly spaced, as HoloCine
Videos are uint8 [T, H, W, 3] `.npy` files (paths relative to the JSON file); T is snapped to
4t+1 by dropping trailing frames. The encoders are injected callables, so the same code runs
with the Wan VAE + umT5 (`model_encoders`, from loaded params) or with stand-ins
(`toy_encoders`, for dry runs; the only choice of this command until weight loaders land):
  python -m holocine_jax.training.preprocess --scenes scenes.jsonl --out /data/holocine \
      --encoders toy --latent_channels 4 --text_dim 24
Legend: T frames, H/W height/width, F latent frames, C latent channels, N tokens, E text dim.
"""

import argparse
import dataclasses
import json
import os
from collections.abc import Callable, Iterable

import jax
import numpy as np

from holocine_jax import scene as scene_lib
from holocine_jax.layout import TextWindows
from holocine_jax.training import dataset, synthetic

VideoEncoder = Callable[[np.ndarray], np.ndarray]  # uint8 [T, H, W, 3] -> latents [F, h, w, C]
TextEncoder = Callable[[scene_lib.Scene], tuple[np.ndarray, TextWindows]]  # -> [N, E], windows


@dataclasses.dataclass(frozen=True)
class Encoders:
  video: VideoEncoder
  text: TextEncoder


def read_scenes(path) -> list[dict]:
  """The JSON-lines scene list, video paths made absolute."""
  base = os.path.dirname(os.path.abspath(path))
  entries = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      entry = json.loads(line)
      for key in ("video", "global_caption", "shot_captions"):
        if key not in entry:
          raise ValueError(f"{path}:{n}: scene entry has no {key!r}")
      entry["video"] = os.path.join(base, entry["video"])
      entries.append(entry)
  return entries


def load_video(path) -> np.ndarray:
  frames = np.load(path)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"{path}: expected uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
  return frames


def encode_example(entry: dict, encoders: Encoders) -> dict:
  """One scene entry -> a record (see `records`), checking shapes against the Scene."""
  frames_TxHxWx3 = load_video(entry["video"])
  usable = (len(frames_TxHxWx3) - 1) // scene_lib.VAE_TIME_STRIDE * scene_lib.VAE_TIME_STRIDE + 1
  scene = scene_lib.Scene.create(
    entry["global_caption"], entry["shot_captions"], usable, entry.get("cut_frames")
  )
  latents_FxHxWxC = np.asarray(encoders.video(frames_TxHxWx3[:usable]))
  if latents_FxHxWxC.shape[0] != scene.num_latent_frames:
    raise ValueError(
      f"{entry['video']}: the video encoder gave {latents_FxHxWxC.shape[0]} latent frames for "
      f"{usable} frames; expected {scene.num_latent_frames}"
    )
  context_NxE, windows = encoders.text(scene)
  if windows.num_shots != scene.num_shots:
    raise ValueError(
      f"{entry['video']}: text windows name {windows.num_shots} shots, scene has {scene.num_shots}"
    )
  ranges = [windows.global_range, *windows.shot_ranges]
  return dict(
    latents=latents_FxHxWxC,
    context=np.asarray(context_NxE),
    latent_bounds=np.asarray(scene.latent_bounds(), np.int32),
    text_ranges=np.asarray(ranges, np.int32),
    prompt=scene.prompt(),
  )


def examples(entries: list[dict], encoders: Encoders) -> Callable[[str], Iterable[dict]]:
  return lambda split: (encode_example(e, encoders) for e in entries)


def toy_encoders(latent_channels: int, text_dim: int) -> Encoders:
  """Stand-ins with the real encoders' shapes: 4x time / 8x space pooling and a fixed 3->C
  projection for video; synthetic's word embedding for text."""
  proj_3xC = np.random.default_rng(0).standard_normal((3, latent_channels)).astype(np.float32)

  def video(frames_TxHxWx3):
    x = frames_TxHxWx3.astype(np.float32) / 127.5 - 1.0
    t, h, w, _ = x.shape
    x = x[:, : h // 8 * 8, : w // 8 * 8].reshape(t, h // 8, 8, w // 8, 8, 3).mean((2, 4))
    groups = [x[:1]] + [x[i : i + 4] for i in range(1, t, 4)]  # causal: frame 0, then 4s
    return np.stack([g.mean(0) for g in groups]) @ proj_3xC

  def text(scene):
    context_NxE, ranges = synthetic.toy_text_embedding(scene.prompt(), text_dim)
    return context_NxE, TextWindows(tuple(ranges[0]), tuple(map(tuple, ranges[1:])))

  return Encoders(video, text)


def model_encoders(prompt_encoder, vae_params, vae_config, *, compiler_options=None) -> Encoders:
  """The real encoders: the Wan VAE (`model.vae.encode`, normalised latents) and a
  `text.PromptEncoder` (umT5 + HoloCine windows); context is stored up to its true length."""
  from holocine_jax import video as video_lib
  from holocine_jax.model import vae

  encode = jax.jit(vae.encode, static_argnums=2, compiler_options=compiler_options)

  def video(frames_TxHxWx3):
    x_1xTxHxWx3 = video_lib.to_model_range(frames_TxHxWx3)[None]
    return np.asarray(encode(vae_params, x_1xTxHxWx3, vae_config)[0], np.float32)

  def text(scene):
    out = prompt_encoder.encode([scene])
    context_TxE = np.asarray(out.context_BxTxD[0], np.float32)
    used = np.flatnonzero(np.abs(context_TxE).sum(-1))
    return context_TxE[: used[-1] + 1 if used.size else 0], out.windows[0]

  return Encoders(video, text)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--scenes", required=True, help="JSON-lines scene list")
  p.add_argument("--out", required=True, help="tfds data_dir to write")
  p.add_argument("--split", default="train")
  p.add_argument("--encoders", choices=["toy"], default="toy")
  p.add_argument("--latent_channels", type=int, default=16)
  p.add_argument("--text_dim", type=int, default=4096)
  args = p.parse_args(argv)
  encoders = toy_encoders(args.latent_channels, args.text_dim)
  entries = read_scenes(args.scenes)
  path = dataset.build(
    args.out,
    examples(entries, encoders),
    splits=(args.split,),
    latent_channels=args.latent_channels,
    text_dim=args.text_dim,
  )
  print(f"wrote {len(entries)} scenes to {path}")


if __name__ == "__main__":
  main()
