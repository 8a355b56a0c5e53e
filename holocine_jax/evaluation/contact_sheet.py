"""Contact sheet of one scene: a row per requested shot, with its caption and cuts marked.

Top: the scene id, SCA and a timeline of the whole video with requested cuts (green, upper half)
and detected cuts (red, lower half). Each row: `shot i: frames a-b` and the wrapped caption on
the left, then `thumbs` frames spread evenly across the shot, each labelled with its frame
number, over a bar from the shot's first frame to the next shot's with its requested cuts (green,
upper half) and the detected cuts in that span (red, lower half): a shot that came out as asked
shows red under green at its ends and nothing in between.
Drawn with Pillow (imported when a sheet is drawn). Legend: T frames, H height, W width.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import numpy as np

from holocine_jax import files

THUMB_HEIGHT = 72
CAPTION_WIDTH = 280  # pixels of the left text column
PAD = 6
REQUESTED, DETECTED, TEXT, BACKGROUND, BAR = (
  (40, 170, 70),
  (220, 40, 40),
  (20, 20, 20),
  (250, 250, 250),
  (200, 200, 200),
)


def thumb_frames(start: int, stop: int, thumbs: int) -> list[int]:
  """Up to `thumbs` distinct frames spread evenly over [start, stop), first and last included."""
  return sorted({int(round(f)) for f in np.linspace(start, stop - 1, thumbs)})


def _ticks(draw, box, first: int, last: int, frames: Sequence[int], color, half: str = "all"):
  """Vertical lines at `frames` on the bar `box` (x0, y0, x1, y1) spanning frames first..last."""
  x0, y0, x1, y1 = box
  ym = (y0 + y1) // 2
  top, bottom = {"all": (y0, y1), "upper": (y0, ym), "lower": (ym, y1)}[half]
  for f in frames:
    x = x0 + (x1 - x0) * (f - first) / max(last - first, 1)
    draw.line([(x, top), (x, bottom)], fill=color, width=2)


def draw(
  frames_TxHxWx3: np.ndarray,
  title: str,
  shot_captions: Sequence[str],
  requested: Sequence[int],
  detected: Sequence[int],
  *,
  thumbs: int = 6,
):
  """The sheet as a PIL image (rows follow the requested shots of the frames given)."""
  from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415  (only evaluation draws)

  font = ImageFont.load_default()
  t, h, w = frames_TxHxWx3.shape[:3]
  tw = max(1, round(w * THUMB_HEIGHT / h))
  bounds = [0, *requested, t]
  width = CAPTION_WIDTH + thumbs * (tw + PAD) + PAD
  row_h = THUMB_HEIGHT + 30
  header_h = 56
  sheet = Image.new("RGB", (width, header_h + row_h * len(shot_captions) + PAD), BACKGROUND)
  pen = ImageDraw.Draw(sheet)
  pen.text((PAD, PAD), title, fill=TEXT, font=font)
  pen.text((PAD, PAD + 14), "requested cuts", fill=REQUESTED, font=font)
  pen.text((PAD + 110, PAD + 14), "detected cuts", fill=DETECTED, font=font)
  timeline = (PAD, 32, width - PAD, 48)
  pen.rectangle(timeline, fill=BAR)
  _ticks(pen, timeline, 0, t - 1, requested, REQUESTED, "upper")
  _ticks(pen, timeline, 0, t - 1, detected, DETECTED, "lower")
  chars = max(8, (CAPTION_WIDTH - 2 * PAD) // 6)
  for i, caption in enumerate(shot_captions):
    start, stop = bounds[i], bounds[i + 1]
    y = header_h + i * row_h
    lines = [f"shot {i}: frames {start}-{stop - 1}", *textwrap.wrap(caption, chars)]
    max_lines = row_h // 12
    text = "\n".join(lines[:max_lines])
    pen.multiline_text((PAD, y), text, fill=TEXT, font=font, spacing=2)
    x = CAPTION_WIDTH
    for f in thumb_frames(start, stop, thumbs):
      thumb = Image.fromarray(frames_TxHxWx3[f]).resize((tw, THUMB_HEIGHT), Image.BILINEAR)
      sheet.paste(thumb, (x, y))
      pen.text((x + 2, y + THUMB_HEIGHT + 1), str(f), fill=TEXT, font=font)
      x += tw + PAD
    bar = (CAPTION_WIDTH, y + THUMB_HEIGHT + 14, x - PAD, y + THUMB_HEIGHT + 22)
    pen.rectangle(bar, fill=BAR)
    _ticks(pen, bar, start, stop, [c for c in (start, stop) if 0 < c < t], REQUESTED, "upper")
    _ticks(pen, bar, start, stop, [c for c in detected if start <= c <= stop], DETECTED, "lower")
  return sheet


def write(path: str | os.PathLike, *args, **kwargs) -> None:
  """Draws a sheet (`draw`'s arguments) and writes it as PNG atomically."""
  sheet = draw(*args, **kwargs)
  with files.atomic_path(path, suffix=".png") as tmp:
    sheet.save(tmp, format="PNG")
