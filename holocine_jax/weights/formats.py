"""Checkpoint formats as data: where each component's files are, which key map reads them, and
the model (config -> abstract params with logical axes) each component fills.

Formats (`--format`): `diffusers` (`transformer/` = high-noise expert, `transformer_2/` = low,
`text_encoder/`, `vae/`, safetensors, sharded with an index or not), `wan` (Wan2.2-T2V-A14B:
`high_noise_model/`, `low_noise_model/` shards with original names, `models_t5_*.pth`,
`Wan2.1_VAE.pth`), `holocine` (HoloCine's `{full,sparse}_{high,low}_noise.safetensors` anywhere
below the folder, variant picked by the config's self_attention, plus the Wan .pth files if
present). `auto` picks the first layout that finds a DiT. Within a component the key map is
picked from the key names (diffusers vs original Wan naming), so a mislabelled folder still
converts or fails with a clear message.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re

import jax

from holocine_jax import sharding
from holocine_jax.model import dit, umt5, vae
from holocine_jax.model.config import DiTConfig
from holocine_jax.weights import (
  diffusers_dit,
  diffusers_vae,
  reader,
  transformers_umt5,
  wan_dit,
  wan_vae,
)

FORMATS = ("diffusers", "wan", "holocine")

# format -> ((component, model kind, glob below --src), ...); {variant} = full | sparse
LAYOUTS = {
  "diffusers": (
    ("high", "dit", "transformer/*.safetensors"),
    ("low", "dit", "transformer_2/*.safetensors"),
    ("text_encoder", "umt5", "text_encoder/*.safetensors"),
    ("vae", "vae", "vae/*.safetensors"),
  ),
  "wan": (
    ("high", "dit", "high_noise_model/*.safetensors"),
    ("low", "dit", "low_noise_model/*.safetensors"),
    ("text_encoder", "umt5", "models_t5_*.pth"),
    ("vae", "vae", "Wan2.1_VAE.pth"),
  ),
  "holocine": (
    ("high", "dit", "**/{variant}_high_noise.safetensors"),
    ("low", "dit", "**/{variant}_low_noise.safetensors"),
    ("text_encoder", "umt5", "**/models_t5_*.pth"),
    ("vae", "vae", "**/Wan2.1_VAE.pth"),
  ),
}


class UnknownFormatError(ValueError):
  """Files that match no known checkpoint layout or key naming."""


@dataclasses.dataclass(frozen=True)
class Component:
  """One model to convert: its name, model kind and source files."""

  name: str
  kind: str  # "dit" | "umt5" | "vae"
  files: tuple[str, ...]


def _glob(src: str, pattern: str) -> tuple[str, ...]:
  return tuple(sorted(glob.glob(os.path.join(src, pattern), recursive=True)))


def _check_index(files: tuple[str, ...]) -> None:
  """Every shard that a folder's `*.safetensors.index.json` lists must be there."""
  for folder in sorted({os.path.dirname(f) for f in files}):
    for index in glob.glob(os.path.join(folder, "*.safetensors.index.json")):
      absent = sorted(reader.read_index(index) - {os.path.basename(f) for f in files})
      if absent:
        raise reader.CheckpointReadError(f"{index} lists shards that are missing: {absent}")


def find_components(src: str, fmt: str, variant: str = "full") -> tuple[str, list[Component]]:
  """(format, components found below `src`); `fmt` 'auto' tries every layout in turn."""
  if not os.path.exists(src):
    raise FileNotFoundError(f"--src {src!r} does not exist")
  if fmt not in ("auto", *FORMATS):
    raise UnknownFormatError(f"unknown format {fmt!r}; known: auto, {', '.join(FORMATS)}")
  for name in FORMATS if fmt == "auto" else (fmt,):
    found = []
    for component, kind, pattern in LAYOUTS[name]:
      files = _glob(src, pattern.format(variant=variant))
      if files:
        _check_index(files)
        found.append(Component(component, kind, files))
    if any(c.kind == "dit" for c in found) or (fmt != "auto" and found):
      return name, found
  looked = "; ".join(
    f"{name}: {', '.join(p.format(variant=variant) for _, _, p in LAYOUTS[name])}"
    for name in (FORMATS if fmt == "auto" else (fmt,))
  )
  what = "could not detect the checkpoint format" if fmt == "auto" else f"no {fmt} checkpoint"
  raise UnknownFormatError(f"{what} in {src!r}; looked for {looked}")


# kind -> ((key that identifies the naming, name, rules factory(config), ignore), ...)
_NAMINGS = {
  "dit": (
    (r"condition_embedder\..*", "diffusers_dit", lambda c: diffusers_dit.RULES, ()),
    (r"time_embedding\..*", "wan_dit", lambda c: wan_dit.RULES, ()),
  ),
  "umt5": (
    (
      r"encoder\.block\..*",
      "transformers_umt5",
      lambda c: transformers_umt5.rules(c.scan_layers),
      transformers_umt5.IGNORE,
    ),
    (r"blocks\.\d+\.attn\..*", "wan_t5", lambda c: transformers_umt5.wan_rules(c.scan_layers), ()),
  ),
  "vae": (
    (r"encoder\.down_blocks\..*", "diffusers_vae", lambda c: diffusers_vae.RULES, ()),
    (
      r"encoder\.downsamples\..*",
      "wan_vae",
      lambda c: wan_vae.rules(c.num_res_blocks, len(c.dim_mult)),
      (),
    ),
  ),
}


def key_map(kind: str, keys, config):
  """(naming name, rules, ignore) for a component from its key names."""
  for signature, name, make_rules, ignore in _NAMINGS[kind]:
    if any(re.fullmatch(signature, k) for k in keys):
      return name, make_rules(config), ignore
  known = ", ".join(name for _, name, _, _ in _NAMINGS[kind])
  raise UnknownFormatError(
    f"the keys match no known {kind} naming ({known}); first keys: {sorted(keys)[:5]}"
  )


def model_config(kind: str, config, param_dtype: str | None = None):
  """The component's config dataclass from a config file (`model`, `text_encoder`, `vae`
  blocks; the latter two default to umT5-XXL and the Wan2.1 VAE). DiT blocks are scanned."""
  if kind == "dit":
    out = dataclasses.replace(DiTConfig.from_config(config.model), scan_layers=True)
  elif kind == "umt5":
    out = umt5.UMT5Config.from_config(config.get("text_encoder", {}))
  else:
    out = vae.VAEConfig.from_config(config.get("vae", {}))
  return out if param_dtype is None else dataclasses.replace(out, param_dtype=param_dtype)


def config_from_dict(kind: str, fields: dict):
  """Inverse of `dataclasses.asdict` for the three config classes (as recorded in the JSON)."""
  cls = {"dit": DiTConfig, "umt5": umt5.UMT5Config, "vae": vae.VAEConfig}[kind]
  return cls.from_config(fields)


def abstract(kind: str, config):
  """(ShapeDtypeStruct tree, logical PartitionSpec tree) of a component; allocates nothing."""
  if kind == "dit":
    init = dit.init_fn(config)
    return sharding.abstract_params(lambda key: init(key)["params"], jax.random.key(0))
  if kind == "umt5":
    return umt5.abstract_params(config)
  return sharding.abstract_params(
    functools.partial(vae.init_params, config=config), jax.random.key(0)
  )
