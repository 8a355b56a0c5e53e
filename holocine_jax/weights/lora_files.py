"""Wan LoRA files <-> our adapter tree (`lora_a` [layers, *in, r], `lora_b` [layers, r, *out]).

A LoRA file names each adapted Linear by its base weight key with the `.weight` replaced:
  diffusers / peft  `transformer.blocks.0.attn1.to_q.lora_A.weight` [r, in], `.lora_B.weight`
                    [out, r] (the `transformer.` prefix optional; alpha folded into the weights)
  wan (ComfyUI)     `diffusion_model.blocks.0.self_attn.q.lora_down.weight`, `.lora_up.weight`
                    (or lora_A / lora_B; the prefix optional) and `.alpha`, a scalar
  musubi            `lora_unet_blocks_0_self_attn_q.lora_down.weight`, `.lora_up.weight`, `.alpha`
(diffusers reads all three: `WanLoraLoaderMixin.lora_state_dict`). The update of a Linear is
scale * (alpha / r) * up @ down, alpha = r when absent. LoRA key rules are derived from the base
key maps (weights/diffusers_dit.py, wan_dit.py), so a LoRA key maps exactly where its base key
does. A file becomes one `Lora`: adapters for the block Linears it touches (zeros for layers it
leaves out), every module padded to the file's largest rank and its alpha / r folded into
`lora_b` where it differs from the file's common one; `Lora.config(model)` is the DiTConfig that
`model.lora.merge_adapters` applies it with. Original-name files may also carry whole-param
deltas (lightx2v's distill LoRAs): `X.diff` of `X.weight`, `X.diff_b` of `X.bias`,
`blocks.N.diff_m` of the modulation table (and peft's `X.lora_B.bias` in diffusers names); they
are added at the LoRA's scale (`Lora.deltas`), as is a down / up pair on a Linear outside the
blocks (head, time / text embedding), taken as the delta (alpha / r) up @ down of its kernel.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from holocine_jax.model import lora as lora_model
from holocine_jax.model.config import BLOCK_LINEARS, DiTConfig
from holocine_jax.weights import diffusers_dit, formats, keymap, reader, wan_dit, writer

NAMINGS = ("diffusers", "wan", "musubi")
FORMATS = ("diffusers", "wan")  # what `write` writes
_BASE_RULES = {"diffusers": diffusers_dit.RULES, "wan": wan_dit.RULES, "musubi": wan_dit.RULES}
# naming -> (key prefix read, key prefix written)
_PREFIX = {
  "diffusers": (r"(?:transformer\.)?", r"transformer\."),
  "wan": (r"(?:diffusion_model\.)?", r"diffusion_model\."),
  "musubi": (r"lora_unet_", r"lora_unet_"),
}
# our leaf -> (key suffix read, key suffix written per naming)
_PARTS = {
  "lora_a": (
    r"(?:lora_down|lora_A)\.weight",
    {"diffusers": r"lora_A\.weight"},
    r"lora_down\.weight",
  ),
  "lora_b": (r"(?:lora_up|lora_B)\.weight", {"diffusers": r"lora_B\.weight"}, r"lora_up\.weight"),
  "alpha": (r"alpha", {}, r"alpha"),
}


class LoraFileError(ValueError):
  """A LoRA file that does not fit the model: unknown keys, other shapes, missing halves."""


def rules(naming: str, write: bool = False) -> tuple[keymap.Rule, ...]:
  """LoRA key rules of `naming` from its base key map: `X.lora_down.weight` (and lora_A, up /
  lora_B, alpha) of every Linear whose weight is `X.weight` -> that Linear's `lora_a` (`lora_b`,
  `alpha`); `write` gives the one spelling `write` uses (literal, so keymap.invert can run)."""
  out = []
  for rule in _BASE_RULES[naming]:
    if rule.transform != "linear" or not rule.target.endswith("/kernel"):
      continue
    module = rule.pattern.removesuffix(r"\.weight")
    if naming == "musubi":
      module = module.replace(r"\.", "_")
    module = _PREFIX[naming][write] + module
    for part, (read_suffix, write_suffix, default) in _PARTS.items():
      if write and naming == "diffusers" and part == "alpha":
        continue  # peft names carry no alpha: `write` folds it into lora_B
      suffix = write_suffix.get(naming, default) if write else read_suffix
      target = rule.target.removesuffix("kernel") + part
      out.append(
        keymap.Rule(rf"{module}\.{suffix}", target, "reshape" if part == "alpha" else "linear")
      )
  return tuple(out) + (() if write else _delta_rules(naming))


# naming -> (base key ending, the ending of a whole-param delta of it): ComfyUI / lightx2v's
# `.diff` / `.diff_b` / `diff_m`, peft's lora_B bias (diffusers' name for `.diff_b`)
_DELTAS = {
  "wan": ((r"\.weight", r"\.diff"), (r"\.bias", r"\.diff_b"), (r"modulation", r"diff_m")),
  "diffusers": ((r"\.bias", r"\.lora_B\.bias"),),
}


def _delta_rules(naming: str) -> tuple[keymap.Rule, ...]:
  """Delta keys of `naming` (e.g. `X.diff_b`, a delta of `X.bias`) -> its param path + '/diff'."""
  out = []
  for rule in _BASE_RULES[naming]:
    for base, delta in _DELTAS.get(naming, ()):
      if rule.pattern.endswith(base):
        pattern = _PREFIX[naming][0] + rule.pattern.removesuffix(base) + delta
        out.append(keymap.Rule(pattern, f"{rule.target}/diff", rule.transform))
  return tuple(out)


_READ = {naming: rules(naming) for naming in NAMINGS}
_WRITE = {naming: rules(naming, write=True) for naming in NAMINGS}


def detect(keys) -> str:
  """The naming whose rules match the most of `keys` (a file uses one)."""
  counts = {n: sum(keymap.match(_READ[n], k) is not None for k in keys) for n in NAMINGS}
  best = max(counts, key=counts.get)
  if not counts[best]:
    raise LoraFileError(
      f"no key is a Wan LoRA key in {', '.join(NAMINGS)} names; first keys: {sorted(keys)[:5]}"
    )
  return best


def _listed(items: list[str], n: int = 5) -> str:
  more = f" and {len(items) - n} more" if len(items) > n else ""
  return f"{', '.join(items[:n])}{more}"


def _shapes(model: DiTConfig) -> dict[str, tuple[int, ...]]:
  """{param path: shape} of `model`'s plain, scanned params."""
  plain = dataclasses.replace(lora_model.plain_config(model), scan_layers=True)
  return {k: v.shape for k, v in _flat(formats.abstract("dit", plain)[0]).items()}


def _linears(shapes: dict) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
  """{block Linear e.g. 'self_attn/q': (in dims, out dims) of its kernel [*in, *out]}."""
  out = {}
  for module, n_in in BLOCK_LINEARS.items():
    shape = shapes[f"blocks/{module}/kernel"][1:]
    out[module] = (tuple(shape[:n_in]), tuple(shape[n_in:]))
  return out


def _flat(tree) -> dict[str, object]:
  from flax import traverse_util

  return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


@dataclasses.dataclass(frozen=True)
class Lora:
  """One LoRA file as our adapters: {'blocks': {module: {'lora_a', 'lora_b'}}} (numpy fp32)."""

  path: str
  naming: str
  rank: int
  alpha: float
  adapters: dict
  sha256: str
  # whole-param deltas (`.diff`, `.diff_b`, `.diff_m` keys) in the params' nesting and layout
  # (a scanned block param stacked, zeros for layers the file leaves out), added at scale
  deltas: dict = dataclasses.field(default_factory=dict)

  @property
  def targets(self) -> tuple[str, ...]:
    """The block modules it adapts, e.g. ('self_attn/q', 'ffn_in')."""
    return tuple(sorted({p.rsplit("/", 1)[0] for p in _flat(self.adapters.get("blocks", {}))}))

  def restricted(self, path: str) -> Lora | None:
    """This LoRA cut to the one param `path` ('/'-joined), or None if it does not touch it."""
    module = path.removeprefix("blocks/").removesuffix("/kernel")
    adapters = {}
    if path.startswith("blocks/") and path.endswith("/kernel") and module in self.targets:
      adapters = {"blocks": _unflatten(_only(self, module))}
    deltas = {k: v for k, v in _flat(self.deltas).items() if k == path}
    if not adapters and not deltas:
      return None
    return dataclasses.replace(self, adapters=adapters, deltas=_unflatten(deltas))

  def config(self, model: DiTConfig) -> DiTConfig:
    """`model` with this LoRA's rank, alpha and targets (what merge_adapters applies it with)."""
    return dataclasses.replace(
      model, lora_rank=self.rank, lora_alpha=self.alpha, lora_targets=self.targets
    )


def sha256(path: str) -> str:
  """Hex sha256 of a file's contents."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 24), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _group(path: str, tensors, naming: str):
  """({(block Linear, layer): {'lora_a' | 'lora_b' | 'alpha': tensor}}, {(param path, layer,
  transform): delta tensor}); a down / up pair on a Linear outside the blocks becomes a delta of
  its kernel. Raises naming unknown keys."""
  modules, deltas, unknown = {}, {}, []
  for key, value in tensors.items():
    hit = keymap.match(_READ[naming], key)
    if hit is None:
      unknown.append(key)
    elif hit[0].endswith("/diff"):
      deltas[hit[0].removesuffix("/diff"), hit[1], hit[2]] = value
    else:
      target, layer, _ = hit
      module, part = target.removeprefix("blocks/").rsplit("/", 1)
      modules.setdefault((module, layer), {})[part] = value
  if unknown:
    raise LoraFileError(
      f"{path}: {len(unknown)} keys match no parameter of the model ({naming} names): "
      f"{_listed(sorted(unknown, key=writer._natural))}"
    )
  bad = [
    f"{m}{'' if i is None else f' layer {i}'}"
    for (m, i), parts in modules.items()
    if {"lora_a", "lora_b"} - set(parts)
    or np.shape(parts["lora_a"])[0] != np.shape(parts["lora_b"])[-1]
  ]
  if bad:
    raise LoraFileError(f"{path}: LoRA modules without a matching down and up: {_listed(bad)}")
  for module, _ in [key for key in modules if key[1] is None]:
    parts = modules.pop((module, None))
    down, up = (np.asarray(parts[p], np.float32) for p in ("lora_a", "lora_b"))
    delta = _alpha(parts, down.shape[0]) / down.shape[0] * (up @ down)
    deltas[f"{module}/kernel", None, "linear"] = delta
  return modules, deltas


def _delta_tree(deltas, shapes: dict, num_layers: int, bad: list) -> dict:
  """The deltas as {param path: array in the param's shape} (zeros where the file has none);
  what does not fit `shapes` ({path: shape}) goes to `bad`."""
  out = {}
  for (param, layer, transform), value in sorted(
    deltas.items(), key=lambda d: (d[0][0], d[0][1] or 0)
  ):
    shape = shapes[param] if layer is None else shapes[param][1:]
    where = f"{param}{'' if layer is None else f' layer {layer}'}: delta {list(value.shape)}"
    if layer is not None and layer >= num_layers:
      bad.append(f"{where} (the model has {num_layers} layers)")
    elif math.prod(value.shape) != math.prod(shape) or (transform == "linear" and value.ndim != 2):
      bad.append(f"{where} vs the model's {list(shape)}")
    else:
      target = out.setdefault(param, np.zeros(shapes[param], np.float32))
      target[() if layer is None else layer] = keymap.read(value, transform, shape, (), np.float32)
  return out


def _check_shapes(modules, linears, num_layers: int) -> tuple[dict, list[str]]:
  """({(module, layer): (rank, in dims, out dims)}, the shapes that do not fit the model)."""
  out, bad = {}, []
  for (module, layer), parts in sorted(modules.items()):
    down, up = parts["lora_a"].shape, parts["lora_b"].shape
    where = f"{module} layer {layer}: down {list(down)} up {list(up)}"
    if module not in linears:
      bad.append(f"{where} (the model has no such Linear)")
      continue
    in_dims, out_dims = linears[module]
    n_in, n_out = math.prod(in_dims), math.prod(out_dims)
    if layer >= num_layers:
      bad.append(f"{where} (the model has {num_layers} layers)")
    elif len(down) != 2 or len(up) != 2 or down[1] != n_in or up[0] != n_out or up[1] != down[0]:
      bad.append(f"{where} vs the model's weight [{n_out}, {n_in}]")
    else:
      out[module, layer] = (down[0], in_dims, out_dims)
  return out, bad


def read(path: str, model: DiTConfig) -> Lora:
  """The LoRA file `path` as our adapters for `model`; raises LoraFileError naming unknown keys
  or shapes that do not fit."""
  try:
    tensors = reader.read_safetensors(path)
  except reader.CheckpointReadError as e:
    raise LoraFileError(str(e)) from None
  naming = detect(tensors)
  modules, deltas = _group(path, tensors, naming)
  shapes = _shapes(model)
  dims, bad = _check_shapes(modules, _linears(shapes), model.num_layers)
  delta_tree = _delta_tree(deltas, shapes, model.num_layers, bad)
  if bad:
    raise LoraFileError(
      f"{path}: the LoRA does not fit this model's shapes (a LoRA for another architecture?): "
      f"{_listed(bad, 3)}"
    )
  rank = max((r for r, _, _ in dims.values()), default=0)
  scales = {key: _alpha(parts, dims[key][0]) / dims[key][0] for key, parts in modules.items()}
  common = set(scales.values())
  alpha = common.pop() * rank if len(common) == 1 else float(rank)
  flat = {}
  for (module, layer), (r, in_dims, out_dims) in dims.items():
    fold = scales[module, layer] / (alpha / rank)
    a = flat.setdefault(
      f"{module}/lora_a", np.zeros((model.num_layers, *in_dims, rank), np.float32)
    )
    b = flat.setdefault(
      f"{module}/lora_b", np.zeros((model.num_layers, rank, *out_dims), np.float32)
    )
    parts = modules[module, layer]
    a[layer, ..., :r] = keymap.read(parts["lora_a"], "linear", (*in_dims, r), (), np.float32)
    b[layer, :r] = keymap.read(parts["lora_b"], "linear", (r, *out_dims), (), np.float32)
    if fold != 1.0:
      b[layer, :r] *= np.float32(fold)
  blocks = {"blocks": _unflatten(flat)} if flat else {}
  return Lora(path, naming, rank, float(alpha), blocks, sha256(path), _unflatten(delta_tree))


def _alpha(parts: dict, rank: int) -> float:
  return float(np.asarray(parts["alpha"], np.float64)) if "alpha" in parts else float(rank)


def _unflatten(flat: dict) -> dict:
  from flax import traverse_util

  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def _torch_shape(path: str, spec) -> tuple[int, ...]:
  """The file's shape of an adapter leaf: down [r, in], up [out, r], alpha a scalar."""
  if path.endswith("/alpha"):
    return ()
  if path.endswith("/lora_a"):
    return (spec.shape[-1], math.prod(spec.shape[1:-1]))
  return (math.prod(spec.shape[2:]), spec.shape[1])


def write(path: str | None, adapters, fmt: str, alpha: float = 0.0, dtype=np.float32) -> int:
  """Writes adapters ({'blocks': {module: {'lora_a', 'lora_b'}}} or unrolled, jax or numpy; alpha
  0: the rank) as one safetensors file in `fmt` names: 'diffusers' (peft names, alpha / r folded
  into lora_B) or 'wan' (original names with `diffusion_model.`, lora_down / lora_up / alpha).
  A None `path` only takes part in the gathers. Returns the number of tensors."""
  if fmt not in FORMATS:
    raise ValueError(f"unknown LoRA format {fmt!r}; known: {', '.join(FORMATS)}")
  flat = {f"blocks/{k}": jnp.asarray(v) for k, v in _flat(scanned(adapters)["blocks"]).items()}
  rank = next(v.shape[-1] for k, v in flat.items() if k.endswith("/lora_a"))
  alpha = alpha or rank
  if fmt == "diffusers" and alpha != rank:
    flat = {k: v * (alpha / rank) if k.endswith("/lora_b") else v for k, v in flat.items()}
  if fmt != "diffusers":
    for module, layers in {k.rsplit("/", 1)[0]: v.shape[0] for k, v in flat.items()}.items():
      flat[f"{module}/alpha"] = jnp.full((layers,), alpha, jnp.float32)
  target = _unflatten({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()})
  items = writer.tensors(_WRITE[fmt], target, lambda p: _torch_shape(p, flat[p]))
  values = writer.source_values(items, lambda p, layer: (flat[p], layer), dtype)
  writer.write_safetensors(path, items, dtype, values)
  return len(items)


EXPERTS = ("high", "low")


@dataclasses.dataclass(frozen=True)
class Request:
  """One `--lora [high=|low=]PATH[:SCALE]`: a file, its scale and the experts it applies to."""

  path: str
  scale: float
  experts: tuple[str, ...]


def parse(spec: str) -> Request:
  """'PATH', 'PATH:SCALE', 'high=PATH[:SCALE]' or 'low=...' (a plain path: both experts);
  raises LoraFileError naming `spec`."""
  names, path = EXPERTS, spec
  head, eq, tail = spec.partition("=")
  if eq and head in EXPERTS:
    names, path = (head,), tail
  scale, (body, colon, tail) = 1.0, path.rpartition(":")
  if colon and not os.path.isfile(path):
    try:
      scale, path = float(tail), body
    except ValueError:
      raise LoraFileError(f"{spec!r}: the scale after ':' must be a number") from None
  if not math.isfinite(scale):
    raise LoraFileError(f"{spec!r}: the scale must be finite")
  if not os.path.isfile(path):
    raise LoraFileError(f"{spec!r}: no file {path!r}")
  return Request(os.path.abspath(path), scale, names)


def load(requests, model: DiTConfig) -> tuple[tuple[Request, Lora], ...]:
  """Every requested file read and checked against `model` (before anything is written)."""
  return tuple((r, read(r.path, model)) for r in requests)


def fingerprint(loaded) -> list[dict]:
  """What the loaded LoRAs change in a model: contents (sha256), scale, experts, in order."""
  return [dict(sha256=lora.sha256, scale=r.scale, experts=list(r.experts)) for r, lora in loaded]


def serving(loaded, expert: str) -> tuple[tuple[Request, Lora], ...]:
  return tuple((r, lora) for r, lora in loaded if expert in r.experts)


def apply(params, loaded, model: DiTConfig, expert: str):
  """`params` (a plain DiT param tree on devices) with every LoRA serving `expert` merged in
  order (`lora.merge_adapters`, then its deltas added at the same scale), each under jit with
  the params donated: no second copy."""
  for request, lora in serving(loaded, expert):
    shardings = jax.tree.map(lambda x: x.sharding, params)
    merge = functools.partial(_merge, config=lora.config(model), scale=request.scale)
    trees = (lora.adapters, lora.deltas)
    if "blocks" not in params:
      trees = tuple(map(_unrolled, trees))
    params = jax.jit(merge, donate_argnums=0, out_shardings=shardings)(params, *trees)
  return params


def _merge(params, adapters, deltas, config: DiTConfig, scale: float):
  """merge_adapters, then every param of `deltas` + scale * its delta (in the param's dtype)."""
  flat = _flat(lora_model.merge_adapters(params, adapters, config, scale))
  for path, delta in _flat(deltas).items():
    flat[path] = (flat[path].astype(jnp.float32) + scale * delta).astype(flat[path].dtype)
  return _unflatten(flat)


def _unrolled(tree: dict) -> dict:
  """A scanned tree's {'blocks': [layers, ...]} as an unrolled model's {'blocks_<i>': ...}."""
  if "blocks" not in tree:
    return tree
  out = {k: v for k, v in tree.items() if k != "blocks"}
  layers = jax.tree.leaves(tree["blocks"])[0].shape[0]
  for i in range(layers):
    out[f"blocks_{i}"] = jax.tree.map(lambda x, i=i: x[i], tree["blocks"])
  return out


def scanned(adapters: dict) -> dict:
  """Adapters of a scanned ({'blocks': ...}) or unrolled ({'blocks_<i>': ...}) model, scanned."""
  if "blocks" in adapters:
    return adapters
  layers = sorted((k for k in adapters if k.startswith("blocks_")), key=lambda k: int(k[7:]))
  return {"blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *(adapters[k] for k in layers))}


def apply_to_param(path: str, array, loaded, model: DiTConfig, expert: str):
  """One parameter ('/'-joined path, e.g. 'blocks/self_attn/q/kernel') with the LoRAs serving
  `expert` merged, for code that streams params one at a time (convert)."""
  hits = [(r, lora.restricted(path)) for r, lora in serving(loaded, expert)]
  hits = tuple((r, lora) for r, lora in hits if lora is not None)
  if not hits:
    return array
  return _flat(apply(_unflatten({path: array}), hits, model, expert))[path]


def _only(lora: Lora, module: str) -> dict:
  return {k: v for k, v in _flat(lora.adapters["blocks"]).items() if k.rsplit("/", 1)[0] == module}
