"""Video files -> uint8 clips at a target fps and size, with PyAV (FFmpeg).

Frame k of the clip shows the time k / fps: the source frame on screen then (the last one whose
timestamp is not after it), so lower rates drop frames and higher rates repeat them. Each kept
frame is scaled (area averaging) to cover height x width and centre-cropped. A file that cannot be
opened raises VideoError with reason "unreadable"; one FFmpeg cannot demux or decode, or that has
no video stream or frames, "corrupt".
Legend: T frames, H height, W width.
"""

from __future__ import annotations

import math
import os

import av
import numpy as np


class VideoError(ValueError):
  """A video that cannot be decoded; `reason` is "unreadable" or "corrupt"."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


def resize_crop(frame: av.VideoFrame, height: int, width: int) -> np.ndarray:
  """An RGB uint8 [H, W, 3] frame: scaled to cover height x width, centre-cropped."""
  scale = max(height / frame.height, width / frame.width)
  h, w = max(height, math.ceil(frame.height * scale)), max(width, math.ceil(frame.width * scale))
  rgb_HxWx3 = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
  top, left = (h - height) // 2, (w - width) // 2
  return rgb_HxWx3[top : top + height, left : left + width]


def _timed(container: av.container.InputContainer):
  """(frame, seconds since the first frame) of the first video stream, and its frame interval."""
  stream = container.streams.video[0]
  stream.thread_type = "AUTO"
  rate = float(stream.average_rate or stream.guessed_rate or 1.0)
  start = None
  for i, frame in enumerate(container.decode(stream)):
    t = frame.time if frame.time is not None else i / rate
    start = t if start is None else start
    yield frame, t - start, 1 / rate


def _schedule(container: av.container.InputContainer, fps: float, limit: float):
  """(source frame, n): each source frame that is on screen at n > 0 output times k / fps."""
  shown_before = lambda t: min(math.ceil(t * fps - 1e-6), limit)  # outputs at times < t
  prev, emitted = None, 0
  for frame, t, interval in _timed(container):
    if prev is not None and shown_before(t) > emitted:
      yield prev, shown_before(t) - emitted
      emitted = shown_before(t)
    if emitted >= limit:
      return
    prev, end = frame, t + interval
  if prev is not None and shown_before(end) > emitted:
    yield prev, shown_before(end) - emitted


def decode(
  path: str | os.PathLike, *, fps: float, height: int, width: int, max_frames: int | None = None
) -> np.ndarray:
  """uint8 [T, height, width, 3] frames of the first video stream at `fps` (at most
  `max_frames`); raises VideoError."""
  path = os.fspath(path)
  try:
    container = av.open(path)
  except OSError as e:  # missing, a folder, no permission (av's file errors are OSErrors)
    raise VideoError("unreadable", f"cannot open {path}: {e.strerror or e}") from None
  except av.error.FFmpegError as e:
    raise VideoError("corrupt", f"FFmpeg cannot read {path}: {e}") from None
  out = []
  with container:
    if not container.streams.video:
      raise VideoError("corrupt", f"{path} has no video stream")
    try:
      for frame, n in _schedule(container, fps, max_frames or math.inf):
        out.extend([resize_crop(frame, height, width)] * n)
    except av.error.FFmpegError as e:
      raise VideoError("corrupt", f"decoding {path} failed after {len(out)} frames: {e}") from None
  if not out:
    raise VideoError("corrupt", f"{path} has no decodable frames")
  return np.stack(out)
