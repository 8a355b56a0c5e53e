"""One training sample as a dict of arrays, and host-side collation of samples into a batch.

A record holds `latents` [F, H, W, C] (VAE latents, channels last), `context` [N, E] (the text
encoder's output for the scene prompt, unpadded), `latent_bounds` [S+1] (shot i owns latent
frames [b_i, b_{i+1})) and `text_ranges` [S+1, 2] (row 0 the global caption's token range, row
i+1 shot i's). Every source (synthetic, tfds) yields this schema; `collate` pads (shots, text, and
latent frames up to a shape bucket) and stacks.
Legend: B batch, F latent frames, H/W latent height/width, C latent channels, N prompt tokens,
T padded text length, E text dim, S shots.
"""

from collections.abc import Sequence

import jax
import numpy as np

from holocine_jax import layout


def grid_of(record, patch) -> layout.LatentGrid:
  f, h, w, _ = record["latents"].shape
  return layout.LatentGrid(f, h, w, tuple(patch))


def collate(
  records: Sequence[dict],
  *,
  patch,
  max_shots: int,
  max_shot_frames: int,
  text_len: int,
  num_frames: int | None = None,
):
  """Records of one latent height and width -> {latents, context, shots, frame_mask} of numpy
  arrays (host batch). Latents are zero-padded at the end to `num_frames` latent frames (None:
  the records' own, which must agree); `frame_mask` [B, F] marks the real frames, and padding
  tokens belong to no shot (`layout.PAD_SHOT_ID`)."""
  shapes = {r["latents"].shape for r in records}
  if len({s[1:] for s in shapes}) != 1 or (num_frames is None and len(shapes) != 1):
    raise layout.LayoutError(f"a batch needs one latent shape, got {sorted(shapes)}")
  grid = grid_of(records[0], patch)
  lays = [layout.ShotLayout(tuple(r["latent_bounds"]), grid.tokens_per_frame) for r in records]
  with jax.default_device(jax.local_devices(backend="cpu")[0]):  # host arrays, not device 0
    shots = layout.make_batch(
      lays,
      [layout.TextWindows.from_ranges(r["text_ranges"]) for r in records],
      max_shots=max_shots,
      max_shot_frames=max_shot_frames,
      text_len=text_len,
      num_frames=num_frames,
    )
  frames_B = np.asarray([r["latents"].shape[0] for r in records])
  num_f = frames_B.max() if num_frames is None else num_frames
  latents_BxFxHxWxC = np.zeros((len(records), num_f, *records[0]["latents"].shape[1:]), np.float32)
  context_BxTxE = np.zeros((len(records), text_len, records[0]["context"].shape[-1]), np.float32)
  for i, r in enumerate(records):
    n = r["context"].shape[0]
    if n > text_len:
      raise layout.LayoutError(f"a prompt has {n} text tokens but text_len={text_len}")
    context_BxTxE[i, :n] = r["context"]
    latents_BxFxHxWxC[i, : frames_B[i]] = r["latents"]
  return dict(
    latents=latents_BxFxHxWxC,
    context=context_BxTxE,
    shots=jax.tree.map(np.asarray, shots),
    frame_mask=np.arange(num_f)[None] < frames_B[:, None],
  )
