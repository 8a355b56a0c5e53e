"""The toy task: do cuts land where asked, and does each shot show its own caption?

For models trained on the built-in synthetic data (training/synthetic.py) and sampled with the
latent->RGB preview decoder (sampling/generator.py:latent_preview), e.g. configs/tiny.py.
`ToyScorer` is an evaluate `Scorer` (`--scorer holocine_jax.evaluation.toy:ToyScorer`): each
shot's frames are averaged back to latent frames (the preview shows latent frame (t-1)//4+1 at
video frame t) and latent pixels (8x8 blocks), then fitted by least squares against every shot the
synthetic generator can draw: background x colour x shape x motion x start on a quarter-pixel grid,
rendered with the generator's own masks and vectors and decoded by the sampler's own preview. The
best fit's attributes are compared with the shot caption's (its background with the global
caption's). Per scene: the fraction of shots right per attribute and `adherence`, the mean over
shots of the fraction of their caption's attributes (colour, shape, motion) shown; motion counts
only in shots of two or more latent frames. Chance: colour 1/6, shape 1/3, motion 1/5.
TransNet V2 misses about half the cuts of the generator's own toy videos (a small shape changing
over an unchanged background, 64x64; SCA 0.76 on the ground truth of `scenes(16)`), so the scorer
also finds cuts itself (`detect_cuts`: SCA 0.97 on that ground truth) and reports their `sca`
with evaluate's matching and costs (transition.py). `scenes` draws evaluation requests from the
synthetic generator itself (held-out seed).

  python -m holocine_jax.evaluation.toy --out toy_scenes.jsonl --count 16
Legend: F latent frames, H/W latent height/width, C latent channels, B backgrounds, K colours,
P starts, Q hypotheses (shape, motion, start), N pixels, T frames.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import re
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from holocine_jax import sample, toy_text
from holocine_jax import scene as scene_lib
from holocine_jax.evaluation import run, transition
from holocine_jax.sampling import generator
from holocine_jax.training import synthetic

CHANNELS = 4  # latent channels of configs/tiny.py
SUBPIXEL = 4  # start positions per latent pixel and axis
NUM_FRAMES = 17  # 5 latent frames: the longest clips of configs/tiny.py's data
SCENE_SEED = 1  # training draws from data.seed 0
MOTIONS = tuple(synthetic.MOTIONS)


def _word(vocab: Sequence[str], caption: str) -> int:
  """Index of the one `vocab` entry that `caption` contains as whole words."""
  found = [i for i, w in enumerate(vocab) if re.search(rf"\b{w}\b", caption.lower())]
  if len(found) != 1:
    raise ValueError(f"caption {caption!r} must name exactly one of {list(vocab)}")
  return found[0]


def parse_shot(caption: str) -> tuple[int, int, int]:
  """(colour, shape, motion) indices named by a synthetic shot caption."""
  return (
    _word(synthetic.COLOURS, caption),
    _word(synthetic.SHAPES, caption),
    _word(MOTIONS, caption),
  )


def _preview(latents_NxC: np.ndarray) -> np.ndarray:
  """float [N, 3]: the sampler's preview RGB (0..255) of latent vectors."""
  n = latents_NxC.shape[0]
  rgb = generator.latent_preview(jnp.asarray(latents_NxC)[None, None, None], 1, 1, n)
  return np.asarray(rgb, np.float32)[0, 0, 0]


@functools.lru_cache(maxsize=4)
def _palette(channels: int) -> tuple[np.ndarray, np.ndarray]:
  """Preview RGB of each background [B, 3] and of each colour over each background [B, K, 3]."""
  bg_BxC = np.stack([synthetic.background_vector(b, channels) for b in synthetic.BACKGROUNDS])
  colour_KxC = np.stack([toy_text.word_vector(c, channels) for c in synthetic.COLOURS])
  fg = _preview((bg_BxC[:, None] + colour_KxC[None]).reshape(-1, channels))
  return _preview(bg_BxC), fg.reshape(len(bg_BxC), len(colour_KxC), 3)


@functools.lru_cache(maxsize=16)
def _masks(frames: int, height: int, width: int) -> np.ndarray:
  """float [Q, F*H*W]: the generator's shape masks for every (shape, motion, start)."""
  cy_P = (np.arange(height * SUBPIXEL) + 0.5) / SUBPIXEL
  cx_P = (np.arange(width * SUBPIXEL) + 0.5) / SUBPIXEL
  cy, cx = (g.reshape(-1, 1, 1) for g in np.meshgrid(cy_P, cx_P, indexing="ij"))
  masks = [
    synthetic.shot_masks(shape, motion, cy, cx, frames, height, width).swapaxes(0, 1)
    for shape in synthetic.SHAPES
    for motion in MOTIONS
  ]  # each [P, F, H, W]
  return np.stack(masks).reshape(-1, frames * height * width).astype(np.float32)


def classify(latent_rgb_FxHxWx3: np.ndarray, channels: int = CHANNELS) -> dict:
  """The synthetic shot that best explains preview RGB frames at latent resolution (least
  squares): indices of its background, colour, shape and motion."""
  f, h, w, _ = latent_rgb_FxHxWx3.shape
  bg_Bx3, fg_BxKx3 = _palette(channels)
  x_N1x3 = latent_rgb_FxHxWx3.reshape(-1, 1, 3).astype(np.float32)
  bg_err_NxB = np.square(x_N1x3 - bg_Bx3).sum(-1)
  fg_err_NxBK = np.square(x_N1x3 - fg_BxKx3.reshape(1, -1, 3)).sum(-1)
  gain_NxBK = fg_err_NxBK - np.repeat(bg_err_NxB, fg_BxKx3.shape[1], axis=1)
  err = bg_err_NxB.sum(0).repeat(fg_BxKx3.shape[1]) + _masks(f, h, w) @ gain_NxBK
  hyp, bk = np.unravel_index(np.argmin(err), err.shape)
  shape, motion, _ = np.unravel_index(
    hyp, (len(synthetic.SHAPES), len(MOTIONS), h * w * SUBPIXEL**2)
  )
  background, colour = divmod(int(bk), fg_BxKx3.shape[1])
  return dict(background=background, colour=colour, shape=int(shape), motion=int(motion))


def exact_x0(xt_FxHxWxC: np.ndarray, sigma: float, scene: scene_lib.Scene, *, per_frame=False):
  """E[x0 | x = (1 - sigma) x0 + sigma noise] of a synthetic scene whose captions are known: per
  shot, the posterior mean over the object's start on the scorer's subpixel grid. `per_frame`:
  every frame's position independent, the best denoiser that ignores temporal coherence. It
  drives the sampler in place of a DiT (a check of schedule, preview and scorer) and gives the
  toy task's loss floors."""
  f, h, w, c = xt_FxHxWxC.shape
  bg_C = synthetic.background_vector(
    synthetic.BACKGROUNDS[_word(synthetic.BACKGROUNDS, scene.global_caption)], c
  )
  a = 1.0 - sigma
  bounds = scene.latent_bounds()
  out = []
  for caption, lo, hi in zip(scene.shot_captions, bounds, bounds[1:], strict=False):
    colour, shape, motion = parse_shot(caption)
    colour_C = toy_text.word_vector(synthetic.COLOURS[colour], c).astype(np.float64)
    m_PxFxHxW = _masks(hi - lo, h, w).reshape(
      len(synthetic.SHAPES), len(MOTIONS), -1, hi - lo, h, w
    )
    m_PxFxHxW = m_PxFxHxW[shape, motion]
    e_FxHxW = (xt_FxHxWxC[lo:hi].astype(np.float64) - a * bg_C) @ colour_C
    fit_PxF = a * np.einsum("pfhw,fhw->pf", m_PxFxHxW, e_FxHxW)
    logp_PxF = (fit_PxF - 0.5 * a * a * (colour_C @ colour_C) * m_PxFxHxW.sum((2, 3))) / sigma**2
    if not per_frame:
      logp_PxF = logp_PxF.sum(1, keepdims=True)
    p_PxF = np.exp(logp_PxF - logp_PxF.max(0))
    p_PxF /= p_PxF.sum(0)
    cover_FxHxW = np.einsum("pf,pfhw->fhw", np.broadcast_to(p_PxF, m_PxFxHxW.shape[:2]), m_PxFxHxW)
    out.append(bg_C + cover_FxHxW[..., None] * colour_C)
  return np.concatenate(out)


def detect_cuts(frames_TxHxWx3: np.ndarray, channels: int = CHANNELS) -> list[int]:
  """First video frames of new shots: where the best single-frame fit (`classify`) of a latent
  frame differs from the previous one's in what captions name and one frame shows (background,
  colour, shape). Blind to a cut between two shots of the same colour and shape."""
  x = latent_frames(np.asarray(frames_TxHxWx3), 0)
  fits = [classify(x[i : i + 1], channels) for i in range(len(x))]
  keys = ("background", "colour", "shape")
  return [
    scene_lib.VAE_TIME_STRIDE * (lat - 1) + 1
    for lat in range(1, len(fits))
    if any(fits[lat - 1][k] != fits[lat][k] for k in keys)
  ]


def latent_frames(frames_TxHxWx3: np.ndarray, first_frame: int) -> np.ndarray:
  """float [F, H/8, W/8, 3]: video frames (starting at video frame `first_frame`) averaged per
  latent frame and per latent pixel, as the preview repeated them."""
  t, height, width, _ = frames_TxHxWx3.shape
  s = generator.VAE_SPACE_STRIDE
  blocks = frames_TxHxWx3.astype(np.float32).reshape(t, height // s, s, width // s, s, 3)
  pixels_TxHxWx3 = blocks.mean((2, 4))
  latent_T = np.asarray([scene_lib.frame_to_latent(first_frame + i) for i in range(t)])
  return np.stack([pixels_TxHxWx3[latent_T == lat].mean(0) for lat in np.unique(latent_T)])


class ToyScorer:
  """Evaluate `Scorer`: per-shot adherence to synthetic captions (module docstring)."""

  name = "toy"

  def __init__(self, channels: int = CHANNELS):
    self.channels = channels

  def __call__(self, shots, shot_captions, global_caption) -> dict[str, float]:
    background = _word(synthetic.BACKGROUNDS, global_caption)
    right = dict(colour=[], shape=[], motion=[], background=[])
    adherence, start = [], 0
    for frames, caption in zip(shots, shot_captions, strict=True):
      x = latent_frames(np.asarray(frames), start)
      start += len(frames)
      fit = classify(x, self.channels)
      colour, shape, motion = parse_shot(caption)
      shown = [fit["colour"] == colour, fit["shape"] == shape]
      if len(x) > 1:  # one latent frame shows no motion
        shown.append(fit["motion"] == motion)
        right["motion"].append(shown[-1])
      right["colour"].append(shown[0])
      right["shape"].append(shown[1])
      right["background"].append(fit["background"] == background)
      adherence.append(np.mean(shown))
    out = {k: float(np.mean(v)) for k, v in right.items() if v}
    frames_TxHxWx3 = np.concatenate(shots)
    requested = np.cumsum([len(s) for s in shots])[:-1].tolist()
    cuts = transition.transition_control(
      requested, detect_cuts(frames_TxHxWx3, self.channels), len(frames_TxHxWx3)
    )
    return dict(out, adherence=float(np.mean(adherence)), sca=cuts.sca)


def scenes(count: int, seed: int = SCENE_SEED) -> list[dict]:
  """`count` sampling requests of 2-3 shots (17 frames), drawn as training draws its
  scenes (synthetic.SyntheticSource) from another seed; request i samples with seed i."""
  source = synthetic.SyntheticSource(
    num_samples=0,
    frame_choices=(NUM_FRAMES,),
    height=1,
    width=1,
    channels=CHANNELS,
    text_dim=1,
    max_shots=3,
    seed=seed,
  )
  out, index = [], 0
  while len(out) < count:
    scene, _, _ = source.scene(index)
    index += 1
    if len(scene.shot_captions) < 2:
      continue
    out.append(
      dict(
        id=f"toy{len(out):03d}",
        global_caption=scene.global_caption,
        shot_captions=list(scene.shot_captions),
        num_frames=scene.num_frames,
        cut_frames=list(scene.cut_frames),
        seed=len(out),
      )
    )
  return out


def write_scenes(path: str, count: int, seed: int = SCENE_SEED) -> None:
  """`scenes(count, seed)` as a sampling JSONL file."""
  with open(path, "w") as f:
    f.writelines(json.dumps(s) + "\n" for s in scenes(count, seed))


def measure(
  out: str,
  config: str,
  checkpoint: str | None,
  *,
  step: int | None = None,
  count: int = 16,
  log: Callable[[str], None] = print,
) -> dict:
  """Samples `count` toy scenes into `out` (holocine_jax.sample with `config`, from a training
  workdir's `step`, its newest if None, or a random init if `checkpoint` is None), evaluates them
  (TransNet V2 cuts + ToyScorer, one window per call: the clips are short) and returns the mean
  of metrics.json."""
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "scenes.jsonl")
  write_scenes(path, count)
  weights = ["--random_init"] if checkpoint is None else ["--checkpoint", checkpoint]
  weights += [] if step is None else ["--step", str(step)]
  argv = ["--config", config, "--scenes", path, "--out", out, "--no_progress", *weights]
  with contextlib.redirect_stdout(io.StringIO()) as printed:
    report = sample.main(argv)
  if report.exit_code:
    raise RuntimeError(f"sampling {' '.join(argv)} failed: {printed.getvalue()}")
  return run.evaluate(out, scorers=[ToyScorer()], batch_size=1, log=log)["mean"]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description="Write toy-task scenes (a sampling JSONL file).")
  parser.add_argument("--out", required=True, help="scenes.jsonl to write")
  parser.add_argument("--count", type=int, default=16)
  parser.add_argument("--seed", type=int, default=SCENE_SEED)
  args = parser.parse_args(argv)
  write_scenes(args.out, args.count, args.seed)


if __name__ == "__main__":
  main()
