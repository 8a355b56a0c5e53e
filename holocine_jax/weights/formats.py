"""Checkpoint formats as data: where each component's files are, which key map reads them, and
the model (config -> abstract params with logical axes) each component fills.

Formats (`--format`): `diffusers` (`transformer/` = high-noise expert, `transformer_2/` = low,
`text_encoder/`, `vae/`, safetensors, sharded with an index or not), `wan` (Wan2.2-T2V-A14B:
`high_noise_model/`, `low_noise_model/` shards with original names, `models_t5_*.pth`,
`Wan2.1_VAE.pth`), `holocine` (HoloCine's `{full,sparse}_{high,low}_noise.safetensors` anywhere
below the folder, variant picked by the config's self_attention, plus the Wan .pth files if
present). `auto` picks the first layout that finds a DiT. Within a component the key map is
picked from the key names (diffusers vs original Wan naming), so a mislabelled folder still
converts or fails with a clear message. A DiT's architecture is read from the checkpoint
(`dit_architecture`): the `config.json` beside its files (diffusers' WanTransformer3DModel or
Wan's WanModel), else the tensor shapes, which fix everything but the head count.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re

import jax

from holocine_jax import sharding
from holocine_jax.model import dit, umt5, vae
from holocine_jax.model.config import DiTConfig
from holocine_jax.weights import (
  diffusers_dit,
  diffusers_vae,
  keymap,
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


# DiT config fields that fix the param shapes (the others: numerics, attention, dtypes, memory)
DIT_SHAPE_FIELDS = (
  "dim",
  "num_layers",
  "num_heads",
  "ffn_dim",
  "freq_dim",
  "text_dim",
  "in_channels",
  "out_channels",
  "patch_size",
)
WAN_HEAD_DIM = 128  # every Wan DiT (1.3B, 5B, 14B); heads cannot be read from tensor shapes
# config.json field -> DiTConfig field, per `_class_name`
_CONFIG_JSON = {
  "WanTransformer3DModel": dict(
    num_attention_heads="num_heads", num_layers="num_layers", ffn_dim="ffn_dim",
    freq_dim="freq_dim", text_dim="text_dim", in_channels="in_channels",
    out_channels="out_channels", patch_size="patch_size", eps="eps",
    rope_max_seq_len="rope_max_positions",
  ),
  "WanModel": dict(
    dim="dim", num_heads="num_heads", num_layers="num_layers", ffn_dim="ffn_dim",
    freq_dim="freq_dim", in_dim="in_channels", out_dim="out_channels", eps="eps",
  ),
}  # fmt: skip


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


def _read_config_json(folder: str) -> tuple[dict, str] | None:
  """(DiTConfig fields, `folder/config.json`) from a Wan DiT `config.json` in `folder`, or None."""
  path = os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    stored = json.load(f)
  names = _CONFIG_JSON.get(stored.get("_class_name") if isinstance(stored, dict) else None)
  if names is None:
    return None
  fields = {ours: stored[theirs] for theirs, ours in names.items() if theirs in stored}
  if "attention_head_dim" in stored and "num_heads" in fields:  # diffusers: dim = heads x head_dim
    fields["dim"] = fields["num_heads"] * stored["attention_head_dim"]
  if "patch_size" in fields:
    fields["patch_size"] = tuple(fields["patch_size"])
  return fields, os.path.join(os.path.basename(folder), "config.json")


def _read_shapes(shapes: dict[str, tuple[int, ...]], rules) -> dict:
  """The DiTConfig fields that the tensor shapes fix (all of DIT_SHAPE_FIELDS but num_heads)."""
  by_path, layers = {}, set()
  for key, shape in shapes.items():
    hit = keymap.match(rules, key)
    if hit is not None:
      by_path.setdefault(hit[0], tuple(shape))
      if hit[1] is not None:
        layers.add(hit[1])
  fields = dict(num_layers=max(layers) + 1) if layers else {}
  patch = by_path.get("patch_embedding/kernel", ())
  if len(patch) == 5:  # conv3d [dim, in, pt, ph, pw]
    fields.update(dim=patch[0], in_channels=patch[1], patch_size=patch[2:])
  for path, field, axis in (
    ("blocks/ffn_in/kernel", "ffn_dim", 0),
    ("time_embedding_1/kernel", "freq_dim", 1),
    ("text_embedding_1/kernel", "text_dim", 1),
  ):
    if len(by_path.get(path, ())) == 2:
      fields[field] = by_path[path][axis]
  head = by_path.get("head/kernel", ())
  if len(head) == 2 and "patch_size" in fields:  # [out * pt * ph * pw, dim]
    fields["out_channels"] = head[0] // math.prod(fields["patch_size"])
  return fields


def dit_architecture(component: Component) -> tuple[dict, str]:
  """(DiTConfig fields the checkpoint says, where they were read) for a DiT component: the
  tensor shapes, with the heads (and eps, RoPE length) from a Wan / diffusers `config.json`
  beside the files; the config.json and the shapes must agree."""
  checkpoint = reader.Checkpoint(component.files)
  _, rules, _ = key_map("dit", list(checkpoint), None)
  fields = _read_shapes({k: v.shape for k, v in checkpoint.items()}, rules)
  said, source = _read_config_json(os.path.dirname(component.files[0])) or ({}, None)
  differ = [f"{k} {said[k]} vs {fields[k]}" for k in said if k in fields and said[k] != fields[k]]
  if differ:
    raise keymap.KeyMapError(
      f"{source} disagrees with the tensor shapes beside it: {', '.join(differ)} (config.json vs "
      "shapes)"
    )
  merged = {**fields, **said}
  ordered = {f.name: merged[f.name] for f in dataclasses.fields(DiTConfig) if f.name in merged}
  return ordered, f"{source} and tensor shapes" if source else "tensor shapes"


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
  init_fn = {"dit": dit.init_fn, "umt5": umt5.init_fn, "vae": vae.init_fn}[kind]
  return sharding.abstract_params(init_fn(config), jax.random.key(0))
