"""Resumable batch sampling: requests in, one mp4 + JSON sidecar per scene out.

Outputs are written atomically, the sidecar last, so a scene is done iff its sidecar exists; a
killed run leaves no partial file. Resume is by content: the sidecar records a fingerprint of
everything that determines the video (the request after defaults and the `setup`: model,
sampler, decoder, weights), so a rerun skips a scene only when its fingerprint is unchanged and
otherwise generates it again (saying what changed) and replaces it. One job per output
directory (`exclusive`: a lock file naming the holder, checked before the model is built).
Requests of equal shape are
batched (up to `batch_size`, the data-parallel width); a bad line or a failed batch is reported
and the rest still run. Nothing non-finite is written: a scene whose latents or pixels hold NaN
or Inf fails (`NonFiniteOutputError`) and its finite batch-mates are generated again without it;
sidecars are strict JSON. With several processes every one generates (the params are sharded
over all of them) and only process 0 writes; what is left to do is what process 0 finds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from holocine_jax import files
from holocine_jax.sampling import video_io
from holocine_jax.sampling.requests import RequestError, SceneRequest


class NonFiniteOutputError(FloatingPointError):
  """Scenes of a batch (by position) whose latents or pixels hold NaN or Inf."""

  def __init__(self, what: str, positions):
    self.what, self.positions = what, [int(i) for i in positions]
    super().__init__(f"non-finite {what} (NaN or Inf) for batch positions {self.positions}")


def finite_rows(x_BxN) -> jnp.ndarray:
  """bool [B]: whether each row of `x` (any trailing shape) is entirely finite."""
  return jnp.isfinite(x_BxN).reshape(x_BxN.shape[0], -1).all(axis=1)


def to_host(x) -> np.ndarray:
  """`x` as numpy on every process; an array spread over several processes is gathered first
  (a collective: every process calls it)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def check_finite(what: str, finite_B) -> None:
  """Raises NonFiniteOutputError naming the positions where `finite_B` is False."""
  bad = np.flatnonzero(~to_host(finite_B))
  if bad.size:
    raise NonFiniteOutputError(what, bad)


LOCK_FILE = ".holocine_sample.lock"


class OutputDirError(RuntimeError):
  """`--out` cannot be used: not a writable directory, or another job is writing it."""


@contextlib.contextmanager
def exclusive(out_dir: str, log: Callable[[str], None] = print):
  """Holds `out_dir` for this job: creates it, checks it is writable and locks it (an flock on
  `LOCK_FILE`, which names the holder's pid and host), so a second job on it fails at once.
  The kernel drops the flock when a holder dies; its stale note is taken over with a message."""
  try:
    os.makedirs(out_dir, exist_ok=True)
    fd = os.open(os.path.join(out_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise OutputDirError(f"--out {out_dir} is not a writable directory ({e.strerror})") from None
  with os.fdopen(fd, "r+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = f.read().strip() or "holder unknown"
      raise OutputDirError(
        f"--out {out_dir} is in use by another sampling job ({holder}); wait for it to finish "
        "or pick another --out"
      ) from None
    stale = f.read().strip()
    if stale:
      log(f"taking over the lock on {out_dir} from a job that is gone ({stale})")
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
    f.flush()
    try:
      yield
    finally:
      f.seek(0)
      f.truncate()


def fingerprint(request: SceneRequest, setup: dict) -> str:
  """sha256 of everything that determines a scene's video: the request after defaults (not its
  id or line) and the job's `setup`."""
  body = dict(request={**request.to_json(), "id": None}, setup=setup)
  return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


def _changes(old: dict, request: SceneRequest, setup: dict) -> list[str]:
  """Names of the request fields and setup parts that differ from a stored sidecar."""
  if "fingerprint" not in old:
    return ["made before sidecars recorded a fingerprint"]
  new = dict(request=request.to_json(), setup=setup)
  return [
    name
    for part in ("request", "setup")
    for name in sorted(set(old.get(part, {})) | set(new[part]))
    if old.get(part, {}).get(name) != new[part].get(name)
  ] or ["fingerprint"]


def _finished(out_dir: str, request_id: str) -> dict | None:
  """The sidecar of a finished scene (mp4 and sidecar present), or None."""
  mp4, sidecar = output_paths(out_dir, request_id)
  if not (os.path.exists(mp4) and os.path.exists(sidecar)):
    return None
  try:
    with open(sidecar) as f:
      stored = json.load(f)
  except (OSError, ValueError):
    return {}  # unreadable: generated again
  return stored if isinstance(stored, dict) else {}


@dataclasses.dataclass
class JobReport:
  done: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  changed: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # regenerated: why
  failed: dict[str, str] = dataclasses.field(default_factory=dict)
  bad_lines: list[str] = dataclasses.field(default_factory=list)

  @property
  def exit_code(self) -> int:
    """0 when every line was valid and every scene is done, else 1."""
    return 1 if self.failed or self.bad_lines else 0

  def summary(self) -> dict:
    """The JSON summary the CLI prints."""
    return dict(
      done=len(self.done),
      skipped=len(self.skipped),
      changed=self.changed,
      failed=self.failed,
      bad_lines=self.bad_lines,
      exit_code=self.exit_code,
    )


def output_paths(out_dir: str, request_id: str) -> tuple[str, str]:
  return os.path.join(out_dir, f"{request_id}.mp4"), os.path.join(out_dir, f"{request_id}.json")


def remove_partial(out_dir: str, request_id: str) -> None:
  """Deletes temp files a killed run left for this scene (the atomic writers' `.<name>.*`)."""
  for name in output_paths(out_dir, request_id):
    for tmp in glob.glob(os.path.join(out_dir, f".{glob.escape(os.path.basename(name))}.*")):
      os.remove(tmp)


def batches(requests: list[SceneRequest], batch_size: int) -> list[list[SceneRequest]]:
  """Consecutive groups of equal `shape_key`, in first-seen order, at most `batch_size` each."""
  groups: dict[tuple, list[SceneRequest]] = {}
  for r in requests:
    groups.setdefault(r.shape_key(), []).append(r)
  return [
    group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)
  ]


def _as_process_zero(todo: list[SceneRequest], requests: list[SceneRequest]) -> list[SceneRequest]:
  """Process 0's `todo` (of `requests`) on every process (a collective when there are several),
  so all generate the same batches whatever their own disks hold."""
  if jax.process_count() == 1 or not requests:
    return todo
  pending = multihost_utils.broadcast_one_to_all(np.array([r in todo for r in requests]))
  return [r for r, p in zip(requests, pending, strict=True) if p]


def run(
  items: Iterable[SceneRequest | RequestError],
  make_generate: Callable[[], Callable[[list[SceneRequest]], list[tuple]]],
  out_dir: str,
  *,
  setup: dict,
  batch_size: int = 1,
  fps: int = 15,
  metadata: dict | None = None,
  log: Callable[[str], None] = print,
  progress: bool = True,
) -> JobReport:
  """Generates every request not done yet with `make_generate()` (called only if there is work;
  `generate(batch)` returns (uint8 frames, timings) per request, in order). `setup` (JSON) is
  what besides the request determines a video; `metadata` is recorded as is."""
  report = JobReport()
  todo, requests = [], []
  for item in items:
    if isinstance(item, RequestError):
      report.bad_lines.append(str(item))
      log(f"skipping bad request: {item}")
      continue
    requests.append(item)
    note = item.scene.snap_note()
    if note:
      log(f"scene {item.id} (line {item.line}): {note}")
    stored = _finished(out_dir, item.id)
    if stored is not None and stored.get("fingerprint") == fingerprint(item, setup):
      report.skipped.append(item.id)
      continue
    if stored is not None:
      report.changed[item.id] = _changes(stored, item, setup)
      log(
        f"scene {item.id} (line {item.line}) differs from its existing video "
        f"({', '.join(report.changed[item.id])}); generating it again"
      )
    todo.append(item)
  todo = _as_process_zero(todo, requests)
  writes = jax.process_index() == 0
  if writes:
    for item in todo:
      remove_partial(out_dir, item.id)
  if report.skipped:
    log(f"{len(report.skipped)} scenes already done in {out_dir}; {len(todo)} to go")
  if not todo:
    return report
  generate = make_generate()

  def fail(r: SceneRequest, error: Exception) -> None:
    report.failed[r.id] = f"{type(error).__name__}: {error}"
    log(f"scene {r.id} (line {r.line}) failed: {type(error).__name__}: {error}")
    bar.update(1)

  bar = tqdm.tqdm(total=len(todo), unit="scene", disable=not progress)
  queue = batches(todo, batch_size)
  while queue:
    batch = queue.pop(0)
    start = time.perf_counter()
    try:
      results = generate(batch)
    except NonFiniteOutputError as e:
      rest = [r for i, r in enumerate(batch) if i not in e.positions]
      for r in (r for r in batch if r not in rest):
        fail(r, e)
      if rest:  # a scene's output must not depend on its batch-mates: generate them alone
        log(f"generating {[r.id for r in rest]} again without their non-finite batch-mates")
        queue.insert(0, rest)
      continue
    except Exception as e:  # noqa: BLE001  (one failed batch must not stop the job)
      for r in batch:
        fail(r, e)
      continue
    for r, (frames, timings) in zip(batch, results, strict=True):
      sidecar = dict(
        request=r.to_json(),
        setup=setup,
        fingerprint=fingerprint(r, setup),
        latent_bounds=list(r.scene.latent_bounds()),
        snapped=r.scene.snapped(),  # requested vs used frames / cuts (not part of the fingerprint)
        fps=fps,
        frames=list(frames.shape),
        timings=timings,
        batch=[x.id for x in batch],
        **(metadata or {}),
      )
      try:
        json.dumps(sidecar, allow_nan=False)  # strict JSON, checked before anything is written
      except ValueError as e:
        fail(r, e)
        continue
      if writes:
        mp4, sidecar_path = output_paths(out_dir, r.id)
        with contextlib.suppress(FileNotFoundError):  # a sidecar only ever describes its mp4
          os.remove(sidecar_path)
        video_io.write_mp4(mp4, frames, fps)
        files.write_json(sidecar_path, sidecar)
      report.done.append(r.id)
      bar.update(1)
    seconds = time.perf_counter() - start
    bar.set_postfix(scene_s=f"{seconds / len(batch):.1f}", step_s=f"{seconds / batch[0].steps:.2f}")
  bar.close()
  return report
