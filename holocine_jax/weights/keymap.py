"""Key maps: rules that turn a PyTorch state dict into our parameter pytree, and back.

A `Rule` matches source keys with a regex and names the target parameter path ('/'-joined,
`{name}` placeholders filled from the regex groups) and a layout transform. A `(?P<layer>\\d+)`
group stacks the tensor at that index of a scanned (leading 'layers') parameter. Conversion
checks every key and shape against the target's abstract params and names what is wrong.
Export runs the same rules backwards: `invert` names the source keys of every target parameter
(each checked to map forward again) and `to_source` undoes a transform.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import string
from collections.abc import Iterable, Mapping

import numpy as np
from flax import traverse_util


class KeyMapError(ValueError):
  """A checkpoint that does not match the model: missing, unexpected or mis-shaped keys."""


def _perm(transform: str, ndim: int) -> tuple[int, ...]:
  """Source axes in transformed order: linear [out, in] -> [in, out]; conv [out, in, *k] ->
  [*k, in, out]; reshape keeps the order."""
  if transform == "linear":
    if ndim != 2:
      raise KeyMapError(f"linear weight must be 2-D, got {ndim} dims")
    return (1, 0)
  if transform == "conv":
    return (*range(2, ndim), 1, 0)
  return tuple(range(ndim))


def _transform(name: str, w: np.ndarray) -> np.ndarray:
  return np.transpose(w, _perm(name, np.ndim(w)))


TRANSFORMS = {name: functools.partial(_transform, name) for name in ("linear", "conv", "reshape")}


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


@dataclasses.dataclass(frozen=True)
class Source:
  """One source tensor feeding a target parameter (a whole param, or layer `layer` of a stack)."""

  key: str
  transform: str
  layer: int | None = None


def plan(
  shapes: Mapping[str, tuple[int, ...]],
  rules: Iterable[Rule],
  target,
  *,
  ignore: Iterable[str] = (),
  config_hint: str = "",
) -> dict[str, tuple[Source, ...]]:
  """{target path: its sources (one, or one per layer in order)} from source key shapes only.

  Nothing is read: shapes are checked against `target` (a tree of ShapeDtypeStruct). Raises
  KeyMapError naming unexpected keys, missing parameters (or scanned layers) and shape
  mismatches (expected vs got), with `config_hint` telling which config should fit.
  """
  rules = tuple(rules)
  flat_target = {"/".join(k): v for k, v in traverse_util.flatten_dict(target).items()}
  whole: dict[str, Source] = {}
  layers: dict[str, dict[int, Source]] = {}
  unexpected, problems = [], []
  for key, src_shape in shapes.items():
    if any(re.fullmatch(p, key) for p in ignore):
      continue
    hit = match(rules, key)
    if hit is None or hit[0] not in flat_target:
      unexpected.append(key)
      continue
    path, layer, transform = hit
    spec = flat_target[path]
    shape = spec.shape if layer is None else spec.shape[1:]
    if transform == "linear" and len(src_shape) != 2:
      problems.append(f"{key}: linear weight must be 2-D, got shape {tuple(src_shape)}")
    elif math.prod(src_shape) != math.prod(shape):
      problems.append(f"{key} -> {path}: expected {tuple(shape)}, got {tuple(src_shape)}")
    elif layer is None:
      whole.setdefault(path, Source(key, transform))  # tied duplicates: the first one serves
    elif layer >= spec.shape[0]:
      problems.append(f"{key}: layer {layer} but the model has {spec.shape[0]} layers")
    else:
      layers.setdefault(path, {})[layer] = Source(key, transform, layer)
  missing = [path for path in flat_target if path not in whole and path not in layers]
  for path, got in layers.items():
    absent = sorted(set(range(flat_target[path].shape[0])) - set(got))
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
  out = {path: (src,) for path, src in whole.items()}
  out.update({path: tuple(got[i] for i in sorted(got)) for path, got in layers.items()})
  return {path: out[path] for path in flat_target}


_GROUP = re.compile(r"\(\?P<(\w+)>[^()]*\)")


def _key_template(pattern: str) -> str:
  """A rule's regex as a format string: named groups -> `{name}`, escaped characters literal."""
  literal = re.sub(r"\\.", "", _GROUP.sub("", pattern))
  if re.search(r"[.^$*+?{}\[\]|()]", literal):
    raise KeyMapError(f"rule pattern {pattern!r} is not literal text plus named groups")
  return re.sub(r"\\(.)", r"\1", _GROUP.sub(lambda m: f"{{{m[1]}}}", pattern))


def _target_regex(target: str) -> str:
  """A rule's target template as a regex: `{name}` -> a named group over one path element."""
  return "".join(
    re.escape(text) + ("" if name is None else rf"(?P<{name}>[^/]+)")
    for text, name, _, _ in string.Formatter().parse(target)
  )


def invert(rules: Iterable[Rule], target) -> dict[str, tuple[Source, ...]]:
  """{target path: the source keys the rules fill it from (one, or one per layer in order)}.

  `plan`'s answer computed from the target alone (a tree of ShapeDtypeStruct), for writing a
  checkpoint: every key is checked to map back to the same path, layer and transform through
  `match` (an earlier rule that claims the key wins, as in conversion). Raises KeyMapError
  naming parameters that no rule fills.
  """
  rules = tuple(rules)
  out, unmapped = {}, []
  for keys, spec in traverse_util.flatten_dict(target).items():
    path = "/".join(keys)
    sources = []
    for rule in rules:
      hit = re.fullmatch(_target_regex(rule.target), path)
      if hit is None:
        continue
      template = _key_template(rule.pattern)
      layers = range(spec.shape[0]) if "{layer}" in template else (None,)
      for layer in layers:
        key = template.format(**hit.groupdict(), **({} if layer is None else {"layer": layer}))
        if match(rules, key) == (path, layer, rule.transform):
          sources.append(Source(key, rule.transform, layer))
    if sources:
      out[path] = tuple(sources)
    else:
      unmapped.append(path)
  if unmapped:
    raise KeyMapError(f"no rule writes parameters {unmapped}")
  return out


def to_source(value, transform: str, shape) -> np.ndarray:
  """The inverse of `read`: a target parameter (or one layer of it) as the source tensor of
  `shape`, by reshaping to the transformed source layout and undoing the transpose."""
  perm = _perm(transform, len(shape))
  return np.asarray(value).reshape([shape[p] for p in perm]).transpose(np.argsort(perm))


def _groups(x_shape, t_shape) -> list[tuple[list[int], list[int]]]:
  """Pairs of (transformed dims, target dims) that one row-major reshape merges or splits."""
  groups, i, j = [], 0, 0
  while i < len(x_shape) or j < len(t_shape):
    gi, gj = [], []
    px = pt = 1
    while not gi or not gj or px != pt:
      if (px <= pt or j == len(t_shape)) and i < len(x_shape):
        px *= x_shape[i]
        gi.append(i)
        i += 1
      else:
        pt *= t_shape[j]
        gj.append(j)
        j += 1
    while i < len(x_shape) and x_shape[i] == 1 and (j == len(t_shape) or t_shape[j] != 1):
      gi.append(i)  # trailing size-1 dims join the group they follow
      i += 1
    groups.append((gi, gj))
  return groups


def read(src, transform: str, shape, index, dtype) -> np.ndarray:
  """`transform(src).reshape(shape)[index]` as `dtype`, reading only (about) what `index` needs.

  `src` may be a lazy (memory-mapped) array: a target range on the first dim of a split group
  (e.g. heads of [D, H, K] from [H*K, D]) reads exactly its rows; merged dims are read whole.
  """
  perm = _perm(transform, src.ndim)
  x_shape = tuple(src.shape[p] for p in perm)
  index = tuple(index) + (slice(None),) * (len(shape) - len(index))
  bounds = [sl.indices(n)[:2] for sl, n in zip(index, shape, strict=True)]
  x_index, block_shape, rest = [slice(None)] * len(x_shape), [], []
  for gi, gj in _groups(x_shape, shape):
    if len(gi) == 1 and gj:
      inner = math.prod(shape[j] for j in gj[1:])
      start, stop = bounds[gj[0]]
      x_index[gi[0]] = slice(start * inner, stop * inner)
      block_shape += [stop - start, *(shape[j] for j in gj[1:])]
      rest += [slice(None), *(slice(*bounds[j]) for j in gj[1:])]
    else:
      block_shape += [shape[j] for j in gj]
      rest += [slice(*bounds[j]) for j in gj]
  src_index = [slice(None)] * src.ndim
  for k, p in enumerate(perm):
    src_index[p] = x_index[k]
  block = np.asarray(src[tuple(src_index)]).transpose(perm).reshape(block_shape)
  return block[tuple(rest)].astype(dtype)


def read_param(tensors: Mapping[str, np.ndarray], sources, spec, index=(), done=None) -> np.ndarray:
  """The slice `index` of one target parameter (ShapeDtypeStruct `spec`) from its sources (one,
  or one per layer of a scanned param: only the layers in `index` are read); `done(key)` is
  called after each source is read (e.g. to release its file pages)."""
  done = done or (lambda key: None)
  if sources[0].layer is None:
    (src,) = sources
    out = read(tensors[src.key], src.transform, spec.shape, index, spec.dtype)
    done(src.key)
    return out
  layers, inner = (tuple(index) or (slice(None),))[0], tuple(index)[1:]
  out = None
  for n, src in enumerate(sources[layers]):
    piece = read(tensors[src.key], src.transform, spec.shape[1:], inner, spec.dtype)
    done(src.key)
    if out is None:
      out = np.empty((len(sources[layers]), *piece.shape), spec.dtype)
    out[n] = piece
  return out


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
  shapes = {key: np.shape(value) for key, value in state.items()}
  sources = plan(shapes, rules, target, ignore=ignore, config_hint=config_hint)
  flat_target = {"/".join(k): v for k, v in traverse_util.flatten_dict(target).items()}
  out = {path: read_param(state, srcs, flat_target[path]) for path, srcs in sources.items()}
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})
