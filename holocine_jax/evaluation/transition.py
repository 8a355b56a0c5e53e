"""Transition control (HoloCine's SCA): do the detected shot cuts land where they were requested?

A cut is the first frame of a new shot. For a scene of F frames with requested cuts R and detected
cuts D (HoloCine's paper gives SCA = exp(-NSD) but not the matching or the penalty; we choose):

- matching: requested and detected cuts are paired one-to-one, in order, and only within
  `tolerance` frames (|r - d| <= tolerance); of all such matchings the cheapest is taken (dynamic
  programming over the sorted cuts: on a line the best order-preserving matching is the best
  matching of all, what the Hungarian algorithm would find);
- cost: |r - d| frames per matched pair, plus `miss_cost * F` frames per unmatched cut (a
  requested cut not detected: missed; a detected cut not requested: extra);
- NSD = cost / (F * max(|R|, 1)), SCA = exp(-NSD).

So a cut k frames off costs k / F, a missed or an extra cut costs `miss_cost` (default 0.5: a cut
beyond the tolerance is a miss plus an extra, 1.0, the most a displacement within a video could
cost), and NSD is a mean per requested cut, so scenes with different shot counts compare. Perfect
control is SCA 1; every requested cut 4 frames (one latent frame) off in a 241-frame scene gives
exp(-4/241) = 0.9835 (the paper reports 0.9837 for HoloCine).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

TOLERANCE = 8  # frames: two latent frames, about half a second at 15 fps
MISS_COST = 0.5  # fraction of the frame count per missed or extra cut


@dataclasses.dataclass(frozen=True)
class Transitions:
  """Requested vs detected cuts of one scene and its transition-control scores."""

  num_frames: int
  requested: tuple[int, ...]
  detected: tuple[int, ...]
  matched: tuple[tuple[int, int], ...]  # (requested, detected) pairs
  missed: tuple[int, ...]  # requested, not detected
  extra: tuple[int, ...]  # detected, not requested
  nsd: float
  sca: float

  def to_json(self) -> dict:
    return dict(
      num_frames=self.num_frames,
      requested_cuts=list(self.requested),
      detected_cuts=list(self.detected),
      matched=[list(p) for p in self.matched],
      missed=list(self.missed),
      extra=list(self.extra),
      nsd=self.nsd,
      sca=self.sca,
    )


def _check(name: str, cuts: Sequence[int], num_frames: int) -> tuple[int, ...]:
  cuts = tuple(int(c) for c in cuts)
  if list(cuts) != sorted(set(cuts)) or any(not 0 < c < num_frames for c in cuts):
    raise ValueError(
      f"{name} cuts must be increasing frames in [1, {num_frames - 1}], got {list(cuts)}"
    )
  return cuts


def transition_control(
  requested: Sequence[int],
  detected: Sequence[int],
  num_frames: int,
  *,
  tolerance: int = TOLERANCE,
  miss_cost: float = MISS_COST,
) -> Transitions:
  """Matches `detected` to `requested` cuts of a `num_frames` video and scores them (above)."""
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  if tolerance < 0 or miss_cost <= 0:
    raise ValueError(f"tolerance must be >= 0 and miss_cost > 0, got {tolerance}, {miss_cost}")
  r, d = _check("requested", requested, num_frames), _check("detected", detected, num_frames)
  miss = miss_cost * num_frames
  # cost[i][j]: best cost of the first i requested and first j detected cuts; step: how it came
  cost = [[(i + j) * miss for j in range(len(d) + 1)] for i in range(len(r) + 1)]
  step = [["r" if i else "d" for j in range(len(d) + 1)] for i in range(len(r) + 1)]
  for i in range(1, len(r) + 1):
    for j in range(1, len(d) + 1):
      options = [(cost[i - 1][j] + miss, "r"), (cost[i][j - 1] + miss, "d")]
      gap = abs(r[i - 1] - d[j - 1])
      if gap <= tolerance:
        options.append((cost[i - 1][j - 1] + gap, "m"))
      cost[i][j], step[i][j] = min(options, key=lambda o: (o[0], o[1] != "m"))
  matched, missed, extra = [], [], []
  i, j = len(r), len(d)
  while i or j:
    s = step[i][j]
    if s == "m":
      matched.append((r[i - 1], d[j - 1]))
    elif s == "r":
      missed.append(r[i - 1])
    else:
      extra.append(d[j - 1])
    i, j = i - (s != "d"), j - (s != "r")
  nsd = cost[len(r)][len(d)] / (num_frames * max(len(r), 1))
  return Transitions(
    num_frames=num_frames,
    requested=r,
    detected=d,
    matched=tuple(reversed(matched)),
    missed=tuple(reversed(missed)),
    extra=tuple(reversed(extra)),
    nsd=nsd,
    sca=math.exp(-nsd),
  )
