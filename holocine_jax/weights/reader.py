"""Zero-copy, file-backed views of checkpoint tensors: safetensors (own header parser) and .pth.

Every tensor comes back as a numpy array that views the memory-mapped file, so nothing is read
until it is sliced, and a slice reads only its pages. bf16 is `ml_dtypes.bfloat16`. Safetensors
are parsed here (8-byte header length, JSON header, raw data) rather than with `safe_open`, whose
numpy framework has no bf16 and whose torch framework copies; parsing ourselves also lets us name
what is wrong with a corrupt or truncated file. `.pth` goes through `torch.load(mmap=True,
weights_only=True)`, bf16 reinterpreted as int16 -> bfloat16 without a copy.
`Checkpoint.release` hands a tensor's pages back to the OS once it is converted, so the resident set
stays about one tensor, not the whole file.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import sys
from collections.abc import Iterable, Mapping

import ml_dtypes
import numpy as np

SAFETENSORS_DTYPES = {
  "BOOL": np.bool_,
  "U8": np.uint8,
  "I8": np.int8,
  "I16": np.int16,
  "I32": np.int32,
  "I64": np.int64,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "F32": np.float32,
  "F64": np.float64,
  "F8_E4M3": ml_dtypes.float8_e4m3fn,
  "F8_E5M2": ml_dtypes.float8_e5m2,
}
_MAX_HEADER = 100 << 20  # the safetensors spec caps the JSON header at 100 MB
_MADV_DONTNEED = 4
_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


class CheckpointReadError(ValueError):
  """A checkpoint file that cannot be read: corrupt, truncated, or needing a missing package."""


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """{key: read-only array viewing the memory-mapped file} of one .safetensors file."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise CheckpointReadError(f"{path}: not a safetensors file (only {size} bytes)")
    n = int.from_bytes(head, "little")
    if n > min(_MAX_HEADER, size - 8):
      raise CheckpointReadError(
        f"{path}: corrupt safetensors header (claims {n} header bytes, the file has {size})"
      )
    try:
      header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise CheckpointReadError(f"{path}: corrupt safetensors header ({e})") from None
    data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
  if not isinstance(header, dict):
    raise CheckpointReadError(f"{path}: corrupt safetensors header (not a JSON object)")
  header.pop("__metadata__", None)
  out = {}
  for key, entry in header.items():
    try:
      dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]])
      shape = tuple(int(d) for d in entry["shape"])
      start, end = (8 + n + int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
      raise CheckpointReadError(
        f"{path}: corrupt safetensors entry {key!r}: {entry!r} ({e!r})"
      ) from None
    if end - start != int(np.prod(shape)) * dtype.itemsize:
      raise CheckpointReadError(
        f"{path}: corrupt safetensors entry {key!r}: {end - start} bytes for shape {shape} "
        f"{entry['dtype']}"
      )
    if end > size:
      raise CheckpointReadError(
        f"{path}: truncated file: tensor {key!r} ends at byte {end} but the file has {size} bytes"
      )
    out[key] = np.frombuffer(data, dtype, int(np.prod(shape)), start).reshape(shape)
  return out


def _torch_to_numpy(torch, tensor) -> np.ndarray:
  """A zero-copy numpy view of a CPU tensor; bf16 through an int16 view."""
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def read_pth(path: str) -> dict[str, np.ndarray]:
  """{key: array viewing the memory-mapped .pth} via torch.load(mmap=True, weights_only=True)."""
  try:
    import torch
  except ImportError:
    raise CheckpointReadError(
      f"{path}: reading .pth checkpoints needs PyTorch: pip install torch (CPU is enough, e.g. "
      "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)"
    ) from None
  try:
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
  except Exception as e:  # torch raises many kinds for corrupt or truncated archives
    raise CheckpointReadError(
      f"{path}: cannot read .pth checkpoint ({type(e).__name__}: {e})"
    ) from None
  for wrapper in ("state_dict", "model_state"):
    if isinstance(state, dict) and set(state) == {wrapper}:
      state = state[wrapper]
  bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
  if not isinstance(state, dict) or bad:
    raise CheckpointReadError(f"{path}: expected a state dict of tensors; non-tensor keys {bad}")
  return {key: _torch_to_numpy(torch, value) for key, value in state.items()}


def read_index(path: str) -> set[str]:
  """Shard file names listed by a `*.safetensors.index.json` (its `weight_map` values)."""
  try:
    with open(path) as f:
      return set(json.load(f)["weight_map"].values())
  except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
    raise CheckpointReadError(f"{path}: unreadable safetensors index ({e!r})") from None


class Checkpoint(Mapping):
  """{key: file-backed array} over one or more checkpoint files; `release` frees a key's pages."""

  def __init__(self, paths: Iterable[str]):
    self.files = tuple(paths)
    self._tensors: dict[str, np.ndarray] = {}
    where: dict[str, str] = {}
    for path in self.files:
      if path.endswith(".safetensors"):
        tensors = read_safetensors(path)
      elif path.endswith((".pth", ".pt", ".bin")):
        tensors = read_pth(path)
      else:
        raise CheckpointReadError(f"{path}: unknown checkpoint file type (.safetensors or .pth)")
      for key, value in tensors.items():
        if key in self._tensors:
          raise CheckpointReadError(f"tensor {key!r} is in both {where[key]} and {path}")
        self._tensors[key], where[key] = value, path

  def __getitem__(self, key: str) -> np.ndarray:
    return self._tensors[key]

  def __iter__(self):
    return iter(self._tensors)

  def __len__(self) -> int:
    return len(self._tensors)

  def release(self, key: str) -> None:
    """Lets the OS reclaim the resident file pages under tensor `key` (Linux; no-op elsewhere).

    Safe because every array here views a read-only file mapping: a later read faults the pages
    back in from the file. (Never do this to anonymous memory: it would zero it.)
    """
    array = self._tensors[key]
    if not sys.platform.startswith("linux") or array.nbytes == 0:
      return
    start = array.__array_interface__["data"][0]
    aligned = start - start % mmap.PAGESIZE
    length = start + array.nbytes - aligned
    _LIBC.madvise(ctypes.c_void_p(aligned), ctypes.c_size_t(length), _MADV_DONTNEED)
