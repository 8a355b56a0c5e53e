"""LoRA param trees: adapters apart from the frozen base, the quantized base, merged weights.

Trees are flax dicts of any nesting (with or without the 'params' collection); a block Linear is
found by its path `.../blocks/<module>/...` (scanned: a leading layers axis) or
`.../blocks_<i>/<module>/...` (unrolled), <module> one of config.BLOCK_LINEARS.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
from flax import traverse_util

from holocine_jax.model import quant
from holocine_jax.model.config import BLOCK_LINEARS, DiTConfig

ADAPTERS = ("lora_a", "lora_b")
_BLOCKS = re.compile(r"blocks(_\d+)?")


def is_adapter(path: tuple[str, ...]) -> bool:
  """Whether a param path names a LoRA adapter leaf."""
  return bool(path) and path[-1] in ADAPTERS


def split(variables) -> tuple[dict, dict]:
  """variables -> (base, adapters): same nesting, every leaf in exactly one of them."""
  flat = traverse_util.flatten_dict(variables)
  base = {k: v for k, v in flat.items() if not is_adapter(k)}
  adapters = {k: v for k, v in flat.items() if is_adapter(k)}
  return traverse_util.unflatten_dict(base), traverse_util.unflatten_dict(adapters)


def merge(base, adapters) -> dict:
  """Inverse of `split`: one tree with the leaves of both."""
  flat_base, flat_adapters = traverse_util.flatten_dict(base), traverse_util.flatten_dict(adapters)
  both = sorted("/".join(k) for k in set(flat_base) & set(flat_adapters))
  if both:
    raise ValueError(f"leaves in both the base and the adapters: {both}")
  return traverse_util.unflatten_dict({**flat_base, **flat_adapters})


def plain_config(config: DiTConfig) -> DiTConfig:
  """The config a merged (plain, unquantized) tree runs on: no LoRA, lora_base bf16."""
  return dataclasses.replace(config, lora_rank=0, lora_alpha=0.0, lora_base="bf16")


def _block_linear(module_path: tuple[str, ...]) -> tuple[bool, str] | None:
  """(scanned, module) of a block Linear's path (without the leaf name), else None."""
  for i, name in enumerate(module_path):
    found = _BLOCKS.fullmatch(name)
    module = "/".join(module_path[i + 1 :])
    if found and module in BLOCK_LINEARS:
      return found.group(1) is None, module
  return None


def _per_layer(fn, scanned: bool):
  """`fn` over kernels [*in, *out], mapped over the leading layers axis when scanned."""
  return jax.vmap(fn) if scanned else fn


def quantize_base(base, config: DiTConfig) -> dict:
  """A float base tree -> the declared frozen-base layout of `config` (jit-able): block Linear
  kernels quantized to `kernel` + `kernel_scale` (lora_base int8 / nf4), every other float leaf
  in bfloat16."""
  out = {}
  for path, value in traverse_util.flatten_dict(base).items():
    found = _block_linear(path[:-1])
    if path[-1] == "kernel" and found and config.lora_base != "bf16":
      scanned, module = found
      n_in = BLOCK_LINEARS[module]
      fn = lambda w, n_in=n_in: quant.quantize(w, config.lora_base, n_in)
      out[path], out[(*path[:-1], "kernel_scale")] = _per_layer(fn, scanned)(value)
    elif jnp.issubdtype(value.dtype, jnp.floating):
      out[path] = value.astype(config.base_dtype)
    else:
      out[path] = value
  return traverse_util.unflatten_dict(out)


def merge_adapters(params, adapters, config: DiTConfig, scale: float = 1.0) -> dict:
  """A plain (lora_rank 0) tree: every adapted kernel W + scale * alpha/r * A.B, a quantized base
  dequantized, in the base's dtype (bfloat16 for a quantized one); jit-able (donate `params`)."""
  flat = traverse_util.flatten_dict(params)
  flat_adapters = traverse_util.flatten_dict(adapters)
  modules = {k[:-1] for k in flat_adapters}
  unknown = sorted(
    "/".join(m) for m in modules if (*m, "kernel") not in flat or not _block_linear(m)
  )
  if unknown:
    raise ValueError(f"adapters for modules that are not block Linears of the params: {unknown}")
  out = {}
  for path, value in flat.items():
    if path[-1] == "kernel_scale":
      continue
    module_path = path[:-1]
    found = _block_linear(module_path)
    if path[-1] != "kernel" or not found:
      out[path] = value
      continue
    scanned, module = found
    n_in = BLOCK_LINEARS[module]
    kernel = value
    if not jnp.issubdtype(value.dtype, jnp.floating):
      kind = "int8" if value.dtype == jnp.int8 else "nf4"
      fn = lambda c, s, kind=kind, n_in=n_in: quant.dequantize(c, s, kind, n_in, jnp.float32)
      kernel = _per_layer(fn, scanned)(value, flat[(*module_path, "kernel_scale")])
    if module_path in modules:
      lora_a, lora_b = (flat_adapters[(*module_path, name)] for name in ADAPTERS)
      if lora_a.shape[-1] != config.lora_rank:
        raise ValueError(
          f"{'/'.join(module_path)}: adapters of rank {lora_a.shape[-1]}, config lora_rank "
          f"{config.lora_rank}"
        )
      kernel = kernel.astype(jnp.float32) + scale * config.lora_scale * _per_layer(_delta, scanned)(
        lora_a, lora_b
      )
    dtype = value.dtype if jnp.issubdtype(value.dtype, jnp.floating) else jnp.bfloat16
    out[path] = kernel.astype(dtype)
  return traverse_util.unflatten_dict(out)


def _delta(lora_a, lora_b):
  """A [*in, r] . B [r, *out] -> [*in, *out] in float32."""
  return jnp.tensordot(
    lora_a.astype(jnp.float32),
    lora_b.astype(jnp.float32),
    axes=1,
    precision=jax.lax.Precision.HIGHEST,
  )
