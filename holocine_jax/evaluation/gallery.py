"""`index.html`: one static page over an evaluated run (means, then per scene its numbers, the
video and the contact sheet; failed scenes with their reason), written atomically."""

from __future__ import annotations

import html
import os

from holocine_jax import files

_STYLE = (
  "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
  "td,th{padding:2px 10px;text-align:left;vertical-align:top}section{margin:2em 0}"
  "img{max-width:100%;border:1px solid #ccc}.failed{color:#b00}"
)


def _row(name: str, value) -> str:
  if isinstance(value, float):
    value = f"{value:.4f}"
  return f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>"


def render(metrics: dict, links: dict[str, dict[str, str]]) -> str:
  """The page for `metrics` (as metrics.json holds); `links[id]` = {"video": url, "sheet": url}."""
  parts = [
    "<!doctype html><html><head><meta charset='utf-8'><title>HoloCine evaluation</title>",
    f"<style>{_STYLE}</style></head><body><h1>HoloCine evaluation</h1>",
    "<table>",
    *(_row(k, v) for k, v in sorted(metrics["mean"].items())),
    *(_row(k, v) for k, v in sorted(metrics["settings"].items())),
    "</table>",
  ]
  for scene_id, error in sorted(metrics["failed"].items()):
    parts.append(f"<p class='failed'>{html.escape(scene_id)}: {html.escape(error)}</p>")
  for scene_id, scene in sorted(metrics["scenes"].items()):
    link = {k: html.escape(v, quote=True) for k, v in links[scene_id].items()}
    rows = [_row(k, scene[k]) for k in ("sca", "nsd", "requested_cuts", "detected_cuts")]
    rows += [_row(k, scene[k]) for k in ("missed", "extra", "num_frames")]
    rows += [
      _row(f"{name}/{k}", v) for name, s in sorted(scene["scores"].items()) for k, v in s.items()
    ]
    parts += [
      f"<section><h2>{html.escape(scene_id)}</h2>",
      f"<p>{html.escape(scene['global_caption'])}</p>",
      "<table>",
      *rows,
      "</table>",
      f"<video src='{link['video']}' controls muted loop preload='none' width='480'></video>",
      f"<p><img src='{link['sheet']}' alt='contact sheet of {html.escape(scene_id)}'></p>",
      "</section>",
    ]
  parts.append("</body></html>\n")
  return "\n".join(parts)


def write(path: str | os.PathLike, metrics: dict, links: dict[str, dict[str, str]]) -> None:
  """Renders the page and writes it atomically."""
  with files.atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(render(metrics, links))
