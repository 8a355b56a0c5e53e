"""Atomic output files: write to a temp name in the same folder, then rename over the target.

A reader (or a rerun) therefore sees either no file or a complete one, never a torn write.
"""

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
  """Yields a temp path next to `path` (same suffix, so writers pick the format); renames it to
  `path` when the block succeeds and deletes it when the block raises."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd, tmp = tempfile.mkstemp(
    prefix=f".{os.path.basename(path)}.",
    suffix=suffix or os.path.splitext(path)[1],
    dir=os.path.dirname(os.path.abspath(path)),
  )
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_json(path: str | os.PathLike, obj) -> None:
  """Strict JSON (indented, sorted keys; NaN / Inf refused) written atomically."""
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, allow_nan=False)
    f.write("\n")
