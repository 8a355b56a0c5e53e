"""Resumable batch sampling: requests in, one mp4 + JSON sidecar per scene out.

Outputs are written atomically, the sidecar last, so a scene is done iff its sidecar exists; a
rerun skips done scenes and a killed run leaves no partial file. Requests of equal shape are
batched (up to `batch_size`, the data-parallel width); a bad line or a failed batch is reported
and the rest still run.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time
from collections.abc import Callable, Iterable

import tqdm

from holocine_jax import files
from holocine_jax.sampling import video_io
from holocine_jax.sampling.requests import RequestError, SceneRequest


@dataclasses.dataclass
class JobReport:
  done: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  failed: dict[str, str] = dataclasses.field(default_factory=dict)
  bad_lines: list[str] = dataclasses.field(default_factory=list)


def output_paths(out_dir: str, request_id: str) -> tuple[str, str]:
  return os.path.join(out_dir, f"{request_id}.mp4"), os.path.join(out_dir, f"{request_id}.json")


def remove_partial(out_dir: str, request_id: str) -> None:
  """Deletes temp files a killed run left for this scene (the atomic writers' `.<name>.*`)."""
  for name in output_paths(out_dir, request_id):
    for tmp in glob.glob(os.path.join(out_dir, f".{glob.escape(os.path.basename(name))}.*")):
      os.remove(tmp)


def is_done(out_dir: str, request_id: str) -> bool:
  mp4, sidecar = output_paths(out_dir, request_id)
  return os.path.exists(sidecar) and os.path.exists(mp4)


def batches(requests: list[SceneRequest], batch_size: int) -> list[list[SceneRequest]]:
  """Consecutive groups of equal `shape_key`, in first-seen order, at most `batch_size` each."""
  groups: dict[tuple, list[SceneRequest]] = {}
  for r in requests:
    groups.setdefault(r.shape_key(), []).append(r)
  return [
    group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)
  ]


def run(
  items: Iterable[SceneRequest | RequestError],
  generate: Callable[[list[SceneRequest]], list[tuple]],
  out_dir: str,
  *,
  batch_size: int = 1,
  fps: int = 15,
  metadata: dict | None = None,
  log: Callable[[str], None] = print,
  progress: bool = True,
) -> JobReport:
  """Generates every request not done yet; `generate(batch)` returns (uint8 frames, timings)
  per request, in order."""
  report = JobReport()
  todo = []
  for item in items:
    if isinstance(item, RequestError):
      report.bad_lines.append(str(item))
      log(f"skipping bad request: {item}")
    elif is_done(out_dir, item.id):
      report.skipped.append(item.id)
    else:
      remove_partial(out_dir, item.id)
      todo.append(item)
  if report.skipped:
    log(f"{len(report.skipped)} scenes already done in {out_dir}; {len(todo)} to go")
  bar = tqdm.tqdm(total=len(todo), unit="scene", disable=not progress)
  for batch in batches(todo, batch_size):
    start = time.perf_counter()
    try:
      results = generate(batch)
    except Exception as e:  # noqa: BLE001  (one failed batch must not stop the job)
      for r in batch:
        report.failed[r.id] = f"{type(e).__name__}: {e}"
        log(f"scene {r.id} (line {r.line}) failed: {type(e).__name__}: {e}")
      bar.update(len(batch))
      continue
    for r, (frames, timings) in zip(batch, results, strict=True):
      mp4, sidecar = output_paths(out_dir, r.id)
      video_io.write_mp4(mp4, frames, fps)
      files.write_json(
        sidecar,
        dict(
          request=r.to_json(),
          latent_bounds=list(r.scene.latent_bounds()),
          fps=fps,
          frames=list(frames.shape),
          timings=timings,
          batch=[x.id for x in batch],
          **(metadata or {}),
        ),
      )
      report.done.append(r.id)
    seconds = time.perf_counter() - start
    bar.update(len(batch))
    bar.set_postfix(scene_s=f"{seconds / len(batch):.1f}", step_s=f"{seconds / batch[0].steps:.2f}")
  bar.close()
  return report
