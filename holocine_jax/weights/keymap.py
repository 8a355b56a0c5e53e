"""Key maps: rules that turn a PyTorch state dict into our parameter pytree.

A `Rule` matches source keys with a regex and names the target parameter path ('/'-joined,
`{name}` placeholders filled from the regex groups) and a layout transform. A `(?P<layer>\\d+)`
group stacks the tensor at that index of a scanned (leading 'layers') parameter. Conversion
checks every key and shape against the target's abstract params and names what is wrong.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

import numpy as np
from flax import traverse_util


class KeyMapError(ValueError):
  """A checkpoint that does not match the model: missing, unexpected or mis-shaped keys."""


def _linear(w: np.ndarray) -> np.ndarray:
  """torch Linear weight [out, in] -> [in, out]."""
  if w.ndim != 2:
    raise KeyMapError(f"linear weight must be 2-D, got shape {w.shape}")
  return w.T


def _conv(w: np.ndarray) -> np.ndarray:
  """torch ConvNd weight [out, in, *kernel] -> [*kernel, in, out]."""
  return np.transpose(w, (*range(2, w.ndim), 1, 0))


TRANSFORMS = {"linear": _linear, "conv": _conv, "reshape": lambda w: w}


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: str
  target: str
  transform: str = "reshape"

  def __post_init__(self):
    if self.transform not in TRANSFORMS:
      raise ValueError(f"unknown transform {self.transform!r}")


def match(rules: Iterable[Rule], key: str) -> tuple[str, int | None, str] | None:
  """(target path, layer index or None, transform) for a source key, or None if unmapped."""
  for rule in rules:
    m = re.fullmatch(rule.pattern, key)
    if m:
      groups = m.groupdict()
      layer = groups.pop("layer", None)
      return rule.target.format(**groups), None if layer is None else int(layer), rule.transform
  return None


def convert(
  state: Mapping[str, np.ndarray],
  rules: Iterable[Rule],
  target,
  *,
  ignore: Iterable[str] = (),
  config_hint: str = "",
):
  """Builds a numpy param tree shaped like `target` (a tree of ShapeDtypeStruct) from `state`.

  Raises KeyMapError naming unexpected keys, missing parameters (or scanned layers) and shape
  mismatches (expected vs got), with `config_hint` telling which config should fit.
  """
  rules = tuple(rules)
  flat_target = {"/".join(k): v for k, v in traverse_util.flatten_dict(target).items()}
  out: dict[str, np.ndarray] = {}
  layers_filled: dict[str, set[int]] = {}
  unexpected, problems = [], []
  for key, value in state.items():
    if any(re.fullmatch(p, key) for p in ignore):
      continue
    hit = match(rules, key)
    if hit is None or hit[0] not in flat_target:
      unexpected.append(key)
      continue
    path, layer, transform = hit
    spec = flat_target[path]
    shape = spec.shape if layer is None else spec.shape[1:]
    arr = TRANSFORMS[transform](np.asarray(value))
    if arr.size != int(np.prod(shape)):
      problems.append(f"{key} -> {path}: expected {tuple(shape)}, got {tuple(np.shape(value))}")
      continue
    arr = arr.reshape(shape).astype(spec.dtype)
    if layer is None:
      out[path] = arr
      continue
    if layer >= spec.shape[0]:
      problems.append(f"{key}: layer {layer} but the model has {spec.shape[0]} layers")
      continue
    if path not in out:
      out[path] = np.zeros(spec.shape, spec.dtype)
    out[path][layer] = arr
    layers_filled.setdefault(path, set()).add(layer)
  missing = [path for path in flat_target if path not in out]
  for path, got in layers_filled.items():
    absent = sorted(set(range(flat_target[path].shape[0])) - got)
    if absent:
      missing.append(f"{path} layers {absent}")
  hint = f" (is this checkpoint for config {config_hint}?)" if config_hint else ""
  errors = []
  if problems:
    errors.append("shape mismatch: " + "; ".join(problems))
  if missing:
    errors.append(f"missing parameters: {missing}")
  if unexpected:
    errors.append(f"unexpected checkpoint keys: {unexpected}")
  if errors:
    raise KeyMapError(" | ".join(errors) + hint)
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})
