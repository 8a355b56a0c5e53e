"""Frames <-> VAE input: uint8 [T, H, W, 3] <-> float in [-1, 1], and shape checks.

The causal VAE maps 4t+1 frames to t+1 latent frames and shrinks space by 8, so a clip it can
encode has T = 4t+1 frames, 3 channels and H, W divisible by 8. Bad shapes raise ValueError
naming the problem. Legend: T frames, H height, W width, C channels.
"""

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from holocine_jax.scene import VAE_TIME_STRIDE

VAE_SPACE_STRIDE = 8


def check_num_frames(num_frames: int, time_stride: int = VAE_TIME_STRIDE) -> None:
  """Raises unless num_frames = stride*t + 1 (the causal VAE's first frame plus whole chunks)."""
  if num_frames < 1 or (num_frames - 1) % time_stride:
    below = (max(num_frames - 1, 0) // time_stride) * time_stride + 1
    raise ValueError(
      f"frame count {num_frames} is not {time_stride}t+1 (the VAE encodes the first frame, then "
      f"chunks of {time_stride}); use {below} or {below + time_stride} frames "
      "(holocine_jax.scene.snap_frames rounds to the nearest)"
    )


def check_video_shape(
  shape: Sequence[int],
  *,
  channels: int = 3,
  space_multiple: int = VAE_SPACE_STRIDE,
  time_stride: int = VAE_TIME_STRIDE,
  batched: bool = True,
) -> None:
  """Raises ValueError naming what is wrong with a [B,] T, H, W, C video shape."""
  layout = "[B, T, H, W, C]" if batched else "[T, H, W, C]"
  if len(shape) != (5 if batched else 4):
    raise ValueError(f"video must be {layout} (channels last), got shape {tuple(shape)}")
  t, h, w, c = shape[-4:]
  if c != channels:
    raise ValueError(
      f"video must have {channels} channels (RGB, channels last {layout}), got {c} in shape "
      f"{tuple(shape)}"
    )
  if h % space_multiple or w % space_multiple:
    raise ValueError(
      f"video height and width must be divisible by {space_multiple}, got {h}x{w} "
      f"(e.g. {h // space_multiple * space_multiple}x{w // space_multiple * space_multiple})"
    )
  check_num_frames(t, time_stride)


def to_model_range(frames_TxHxWxC) -> jnp.ndarray:
  """uint8 frames [T, H, W, 3] -> float32 in [-1, 1] (x / 127.5 - 1), after checking the shape."""
  frames_TxHxWxC = np.asarray(frames_TxHxWxC)
  if frames_TxHxWxC.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 in [0, 255], got dtype {frames_TxHxWxC.dtype}")
  check_video_shape(frames_TxHxWxC.shape, batched=False)
  return jnp.asarray(frames_TxHxWxC, jnp.float32) / 127.5 - 1.0


def to_uint8(video_TxHxWxC) -> jnp.ndarray:
  """Float frames in [-1, 1] (clipped) -> uint8 [0, 255], rounded to nearest."""
  if video_TxHxWxC.ndim not in (4, 5) or video_TxHxWxC.shape[-1] != 3:
    raise ValueError(
      f"video must be [T, H, W, 3] or [B, T, H, W, 3] channels last, got {video_TxHxWxC.shape}"
    )
  x = (jnp.clip(jnp.asarray(video_TxHxWxC, jnp.float32), -1.0, 1.0) + 1.0) * 127.5
  return jnp.round(x).astype(jnp.uint8)
