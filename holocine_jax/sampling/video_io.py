"""mp4 writing (H.264 through PyAV's bundled FFmpeg), atomic."""

import os

import numpy as np

from holocine_jax import files


def write_mp4(path: str | os.PathLike, frames_TxHxWx3: np.ndarray, fps: int = 15) -> None:
  """uint8 frames [T, H, W, 3] -> H.264 yuv420p mp4 at `fps`, written atomically."""
  import av  # noqa: PLC0415  (optional dependency of the sampling job only)

  frames = np.asarray(frames_TxHxWx3)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
  t, h, w, _ = frames.shape
  if h % 2 or w % 2:
    raise ValueError(f"H.264 yuv420p needs even height and width, got {h}x{w}")
  with files.atomic_path(path) as tmp, av.open(tmp, mode="w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.options = {"crf": "18"}
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())


def read_mp4(path: str | os.PathLike) -> tuple[np.ndarray, float]:
  """(uint8 frames [T, H, W, 3], fps) of an mp4: for checks and tests."""
  import av  # noqa: PLC0415

  with av.open(os.fspath(path)) as container:
    stream = container.streams.video[0]
    frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack(frames), float(stream.average_rate)
