"""Clips -> training records: the video and text encoders, batched.

`Encoders` turns a batch of equal-length clips into records of the `training.records` schema in
one video call and one text call of a fixed batch size (short batches are padded, so each clip
length compiles once). `from_checkpoint` builds the Wan VAE + umT5 the sampler uses from a
converted folder (`holocine_jax.convert`), jitted with the batch split over the mesh's batch
axes; `toy` are stand-ins with the same shapes for tests and dry runs.
Legend: B batch, T frames, H/W height/width, F latent frames, h/w latent height/width,
C latent channels, N prompt tokens, E text dim.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from holocine_jax import sharding, text, video
from holocine_jax.data.clips import Clip, Skip
from holocine_jax.layout import TextWindows
from holocine_jax.model import vae
from holocine_jax.scene import Scene
from holocine_jax.toy_text import toy_text_embedding
from holocine_jax.weights import store

VideoFn = Callable[[np.ndarray], np.ndarray]  # uint8 [B, T, H, W, 3] -> latents [B, F, h, w, C]
TextFn = Callable[[Sequence[Scene]], list[tuple[np.ndarray, TextWindows]]]  # ([N, E], windows)


@dataclasses.dataclass(frozen=True)
class Encoders:
  """Batched encoders and the record dims they give."""

  video: VideoFn
  text: TextFn
  check_text: Callable[[Scene], object]  # raises ValueError when the prompt does not fit
  batch_size: int  # clips per call
  latent_channels: int
  text_dim: int

  def encode(self, clips: Sequence[Clip]) -> list[dict | Skip]:
    """Records (or Skips) of up to `batch_size` clips of one length, in order."""
    if not 0 < len(clips) <= self.batch_size:
      raise ValueError(f"encode takes 1..{self.batch_size} clips, got {len(clips)}")
    pad = [clips[0]] * (self.batch_size - len(clips))
    frames_BxTxHxWx3 = np.stack([c.frames_TxHxWx3 for c in [*clips, *pad]])
    latents_BxFxhxwxC = np.asarray(self.video(frames_BxTxHxWx3), np.float32)
    texts = self.text([c.scene for c in [*clips, *pad]])
    return [_record(c, z, *t) for c, z, t in zip(clips, latents_BxFxhxwxC, texts, strict=False)]


def _record(clip: Clip, latents_FxhxwxC: np.ndarray, context_NxE, windows: TextWindows):
  scene = clip.scene
  if latents_FxhxwxC.shape[0] != scene.num_latent_frames:
    raise ValueError(
      f"the video encoder gave {latents_FxhxwxC.shape[0]} latent frames for {scene.num_frames} "
      f"frames; expected {scene.num_latent_frames}"
    )
  if windows.num_shots != scene.num_shots:
    raise ValueError(f"text windows name {windows.num_shots} shots, scene has {scene.num_shots}")
  bad = [
    n
    for n, x in (("latents", latents_FxhxwxC), ("context", context_NxE))
    if not np.all(np.isfinite(x))
  ]
  if bad:
    return Skip("nonfinite", f"the encoders gave NaN or Inf in {' and '.join(bad)}")
  return dict(
    latents=latents_FxhxwxC,
    context=np.asarray(context_NxE, np.float32),
    latent_bounds=np.asarray(scene.latent_bounds(), np.int32),
    text_ranges=np.asarray([windows.global_range, *windows.shot_ranges], np.int32),
    prompt=scene.prompt(),
  )


def toy(latent_channels: int, text_dim: int, text_len: int = text.TEXT_LEN, batch_size: int = 1):
  """Stand-ins with the real encoders' shapes: 4x time / 8x space pooling and a fixed 3->C
  projection for video; the toy word embedding (and a `text_len` token limit) for text."""
  proj_3xC = np.random.default_rng(0).standard_normal((3, latent_channels)).astype(np.float32)

  def clip(frames_TxHxWx3):
    x = frames_TxHxWx3.astype(np.float32) / 127.5 - 1.0
    t, h, w, _ = x.shape
    x = x[:, : h // 8 * 8, : w // 8 * 8].reshape(t, h // 8, 8, w // 8, 8, 3).mean((2, 4))
    groups = [x[:1]] + [x[i : i + 4] for i in range(1, t, 4)]  # causal: frame 0, then 4s
    return np.stack([g.mean(0) for g in groups]) @ proj_3xC

  def scene_text(scene):
    context_NxE, ranges = toy_text_embedding(scene.prompt(), text_dim)
    if len(context_NxE) > text_len:
      raise text.TextError(f"prompt has {len(context_NxE)} toy tokens but text_len is {text_len}")
    return context_NxE, TextWindows.from_ranges(ranges)

  return Encoders(
    video=lambda frames_BxTxHxWx3: np.stack([clip(f) for f in frames_BxTxHxWx3]),
    text=lambda scenes: [scene_text(s) for s in scenes],
    check_text=scene_text,
    batch_size=batch_size,
    latent_channels=latent_channels,
    text_dim=text_dim,
  )


def video_encoder(vae_config: vae.VAEConfig):
  """Jitted (VAE params, uint8 frames [B, T, H, W, 3]) -> normalised latents [B, F, h, w, C] in
  fp32: `model`'s video call, which the planner compiles for TPU slices (`--for preprocess`)."""

  def encode(params, frames_BxTxHxWx3):
    x_BxTxHxWx3 = frames_BxTxHxWx3.astype(jnp.float32) / 127.5 - 1.0  # video.to_model_range
    return vae.encode(params, x_BxTxHxWx3, vae_config).astype(jnp.float32)

  return jax.jit(encode)


def model(
  prompts: text.PromptEncoder,
  vae_params,
  vae_config: vae.VAEConfig,
  mesh: jax.sharding.Mesh,
  rules,
  *,
  batch_size: int = 1,
) -> Encoders:
  """The Wan VAE (normalised latents) and umT5 with HoloCine's windows (context stored up to its
  true length), on `mesh`; `batch_size` is rounded up to a multiple of its batch shards."""
  shards = sharding.batch_shards(mesh, rules)
  batched = jax.sharding.NamedSharding(
    mesh, jax.sharding.PartitionSpec(sharding.batch_axes(rules) or None)
  )
  encode = video_encoder(vae_config)

  def video_fn(frames_BxTxHxWx3):
    video.check_video_shape(frames_BxTxHxWx3.shape)
    with sharding.activate(mesh, rules):
      return encode(vae_params, jax.device_put(frames_BxTxHxWx3, batched))

  def text_fn(scenes):
    out = prompts.encode(list(scenes))
    context_BxTxE = np.asarray(out.context_BxTxD, np.float32)
    rows = []
    for context_TxE, windows in zip(context_BxTxE, out.windows, strict=True):
      used = np.flatnonzero(np.abs(context_TxE).sum(-1))  # umT5 zeroes the padding
      rows.append((context_TxE[: used[-1] + 1 if used.size else 0], windows))
    return rows

  return Encoders(
    video=video_fn,
    text=text_fn,
    check_text=lambda scene: text.tokenize_scene(prompts.tokenizer, scene, prompts.text_len),
    batch_size=-(-batch_size // shards) * shards,
    latent_channels=vae_config.z_dim,
    text_dim=prompts.config.d_model,
  )


def from_checkpoint(
  checkpoint: str, tokenizer: str, mesh, rules, *, text_len: int = text.TEXT_LEN, batch_size=1
) -> Encoders:
  """`model` with the VAE and umT5 of a converted folder (components `vae`, `text_encoder`)."""
  _, vae_config = store.component_config(checkpoint, "vae")
  prompts = text.PromptEncoder.from_checkpoint(
    checkpoint, tokenizer, mesh, rules, text_len=text_len
  )
  vae_params = store.load(checkpoint, "vae", mesh, rules)
  return model(prompts, vae_params, vae_config, mesh, rules, batch_size=batch_size)
