"""The plug-in point for learned scene metrics (consistency, aesthetics, text alignment).

HoloCine's other metrics need feature models whose weights this project does not ship:
inter-shot consistency (ViCLIP / CLIP features compared across shots), intra-shot subject and
background consistency (DINO / CLIP features across the frames of a shot), aesthetic and semantic
scores (LAION aesthetic head, CLIP/ViCLIP text-video similarity). A `Scorer` computes any of them
from a scene's frames split by the requested shots; `evaluate` records each scene's scores under
`scores[name]` in metrics.json and averages them. Nothing here fakes one: with no scorer given,
only transition control is measured. On the command line `--scorer pkg.module:factory` imports a
zero-argument factory that returns a Scorer.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Scorer(Protocol):
  """Scores one scene: uint8 frames [T_i, H, W, 3] of each requested shot and the captions."""

  name: str

  def __call__(
    self, shots: Sequence[np.ndarray], shot_captions: Sequence[str], global_caption: str
  ) -> Mapping[str, float]: ...


def load(spec: str) -> Scorer:
  """The Scorer made by `module:factory` (a zero-argument callable), checked to be one."""
  module, _, attr = spec.partition(":")
  if not module or not attr:
    raise ValueError(f"--scorer must be 'package.module:factory', got {spec!r}")
  scorer = getattr(importlib.import_module(module), attr)()
  if not isinstance(scorer, Scorer):
    raise TypeError(f"{spec}() returned {type(scorer).__name__}, not a Scorer (name, __call__)")
  return scorer
