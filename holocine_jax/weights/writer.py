"""Streaming safetensors writer: params (sharded over devices and hosts) -> PyTorch-named tensors.

The key map runs backwards (`keymap.invert`): every output tensor is one parameter or one layer
of a stacked one. It is sliced and cast on the devices, gathered to the hosts on its own
(`process_allgather`: each host holds that one tensor, never the model), put back in the source
layout (`keymap.to_source`) and appended to its file by the writing process. Names, shapes and
offsets are known before any data, so a file is written front to back in one pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from holocine_jax.weights import keymap, reader

SAFETENSORS_NAMES = {np.dtype(v): k for k, v in reader.SAFETENSORS_DTYPES.items()}


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One output tensor: the parameter path it comes from, its key-map source and torch shape."""

  path: str
  source: keymap.Source
  shape: tuple[int, ...]


def _natural(key: str) -> list:
  """Sort key that puts blocks.2 before blocks.10."""
  return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def tensors(rules, target, torch_shape: Callable[[str], tuple[int, ...]]) -> list[Tensor]:
  """Every tensor the rules fill `target` from, in natural key order, shaped by `torch_shape(path)`.

  Checked by planning the conversion of exactly these keys and shapes: what is written converts
  back (KeyMapError otherwise).
  """
  out = [
    Tensor(path, src, tuple(torch_shape(path)))
    for path, sources in keymap.invert(rules, target).items()
    for src in sources
  ]
  keymap.plan({t.source.key: t.shape for t in out}, rules, target)
  return sorted(out, key=lambda t: _natural(t.source.key))


def shards(items: list[Tensor], itemsize: int, max_bytes: int) -> list[list[Tensor]]:
  """Consecutive groups of at most `max_bytes` (a larger tensor goes alone)."""
  groups, size = [[]], 0
  for t in items:
    nbytes = int(np.prod(t.shape)) * itemsize
    if groups[-1] and size + nbytes > max_bytes:
      groups.append([])
      size = 0
    groups[-1].append(t)
    size += nbytes
  return groups


@functools.partial(jax.jit, static_argnums=2)
def _layer(x, i, dtype):
  return jax.lax.dynamic_index_in_dim(x, i, keepdims=False).astype(dtype)


def fetch(param: jax.Array, layer: int | None, dtype) -> np.ndarray:
  """A parameter (or layer `layer` of a stacked one) cast to `dtype` on its devices, then
  gathered whole to every process. Collective: every process must call it."""
  if layer is not None:
    param = _layer(param, layer, np.dtype(dtype))
  elif param.dtype != dtype:
    param = param.astype(dtype)
  return np.asarray(multihost_utils.process_allgather(param, tiled=True))


def _header(items: list[Tensor], dtype) -> bytes:
  entries, offset = {"__metadata__": {"format": "pt"}}, 0
  for t in items:
    end = offset + int(np.prod(t.shape)) * dtype.itemsize
    entries[t.source.key] = dict(
      dtype=SAFETENSORS_NAMES[dtype], shape=list(t.shape), data_offsets=[offset, end]
    )
    offset = end
  head = json.dumps(entries, separators=(",", ":")).encode()
  return head + b" " * (-(8 + len(head)) % 8)  # data starts 8-byte aligned, as safetensors does


def write_safetensors(
  path: str | None, items: list[Tensor], dtype, values: Iterable[np.ndarray]
) -> None:
  """`items` with `values` (source layout, in order) as one safetensors file. Every value is
  drawn (they may be collectives) but only a process with a `path` writes."""
  dtype = np.dtype(dtype)
  with contextlib.ExitStack() as stack:
    f = None if path is None else stack.enter_context(open(path, "wb"))
    head = _header(items, dtype)
    if f is not None:
      f.write(len(head).to_bytes(8, "little") + head)
    for t, value in zip(items, values, strict=True):
      if value.shape != t.shape or value.dtype != dtype:
        raise ValueError(f"{t.source.key}: got {value.shape} {value.dtype}, want {t.shape} {dtype}")
      if f is not None:
        f.write(np.ascontiguousarray(value).reshape(-1).view(np.uint8).data)


def source_values(items: list[Tensor], param: Callable, dtype) -> Iterator[np.ndarray]:
  """Each item's tensor in its source layout; `param(path, layer)` -> (jax.Array, layer or
  None) finds the array holding it."""
  for t in items:
    array, layer = param(t.path, t.source.layer)
    host = fetch(array, layer, dtype)
    yield keymap.to_source(host, t.source.transform, t.shape)
    del host


def _fsync(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_dir(out: str, write: bool = True):
  """Yields `.<out>.partial` next to `out` (a stale one is cleared); on success every file and
  folder in it is fsynced and it is renamed to `out`; on error it is removed. `write` False
  (processes that do not write) yields None and touches nothing."""
  if not write:
    yield None
    return
  out = os.path.abspath(out.rstrip("/"))
  tmp = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.partial")
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
    for folder, _, names in os.walk(tmp, topdown=False):
      for name in names:
        _fsync(os.path.join(folder, name))
      _fsync(folder)
    os.rename(tmp, out)
    _fsync(os.path.dirname(out))
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
