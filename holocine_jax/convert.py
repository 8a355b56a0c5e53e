"""Converts HoloCine / Wan2.2 / diffusers PyTorch weights into orbax checkpoints.

  python -m holocine_jax.convert --src checkpoints/ --format holocine --param_dtype bfloat16 \
      --out /data/holocine_full
  python -m holocine_jax.convert --src Wan2.2-T2V-A14B-Diffusers --out /data/wan22   # auto format
  python -m holocine_jax.convert --src checkpoints/ --components high,low \
      --config configs/holocine_a14b.py:attention=sparse --out /data/sparse  # sparse_* experts
  python -m holocine_jax.convert --src Wan2.2-T2V-A14B --lora high=lightning_high.safetensors \
      --lora low=lightning_low.safetensors --out /data/wan22_lightning  # step-distill LoRAs

The DiT architecture comes from the checkpoint: the `config.json` beside an expert's files
(diffusers or Wan) and the tensor shapes, which give all but the number of heads; without a
config.json that is --config's, or without --config dim / 128 (the head_dim of every Wan DiT).
--config adds what files cannot say (attention variant, dtypes, mesh, the umT5 and VAE sizes;
default configs/wan22_t2v_a14b.py); a --config whose model fields differ from the checkpoint's
fails with one line naming the fields and the config in configs/ that fits.

`--lora [high=|low=]PATH[:SCALE]` (repeatable) merges a Wan LoRA file (diffusers/peft, original /
ComfyUI or musubi-tuner names; weights/lora_files.py) into both DiT experts or the one named, one
parameter at a time as it streams; `convert.json` records each expert's LoRAs (sha256, scale).

Writes one orbax checkpoint per component found (`high`, `low` experts, `text_encoder`, `vae`)
plus `convert.json` (sources, sizes, format, configs, source dtypes, saved dtype, param counts,
times). Source tensors must be floating point and finite (`--allow_nonfinite` lets NaN/Inf pass).
Parameters are streamed one at a time into their shardings (see weights/loader.py) and saved in
chunks with orbax partial saves, so the devices hold at most one chunk (`--chunk_mb`, or the
largest parameter) and the host about one parameter's local slice. Everything is written into
`.<out>.partial` next to `--out` (a local or mounted path) and renamed at the end: a killed
conversion leaves no directory that looks complete. weights/store.py reads what was written
(`store.load(directory, component, mesh, rules)` restores a component into its shardings).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import shutil
import time

import jax
import tqdm
from orbax.checkpoint.experimental import v1 as ocp

from holocine_jax import config_file, sharding
from holocine_jax.model.config import DiTConfig
from holocine_jax.weights import formats, loader, lora_files, store

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
DEFAULT_CONFIG = os.path.join(CONFIGS, "wan22_t2v_a14b.py")
# (dim, num_layers) -> the Wan DiT of that size
_FAMILIES = {
  (1536, 30): "Wan2.1 T2V-1.3B",
  (3072, 30): "Wan2.2 TI2V-5B",
  (5120, 40): "Wan 14B / Wan2.2 A14B expert",
}


class ArchitectureError(ValueError):
  """A DiT checkpoint's architecture differs from --config's model, or its heads are unknown."""


def _fitting_configs(fields: dict) -> list[str]:
  """The config files in configs/ whose model has the architecture `fields`."""
  fits = []
  for path in sorted(glob.glob(os.path.join(CONFIGS, "*.py"))):
    try:
      model = DiTConfig.from_config(config_file.load(path).model)
    except (AttributeError, ImportError):  # common.py, __init__.py; configs/ not importable
      continue
    if all(getattr(model, k) == v for k, v in fields.items()):
      fits.append(os.path.relpath(path))
  return fits


def _size(dim, layers) -> str:
  return f"dim={dim}, {layers} layers"


def _mismatch(name: str, said: dict, source: str, base: DiTConfig, config: str) -> str | None:
  """One line: how the checkpoint's architecture `said` and --config's differ, and which
  config fits; None when they agree."""
  differ = [k for k in said if getattr(base, k) != said[k]]
  if not differ:
    return None
  shown = ", ".join(f"{k} {said[k]} vs {getattr(base, k)}" for k in differ[:3])
  more = f", +{len(differ) - 3} more" if len(differ) > 3 else ""
  family = _FAMILIES.get((said.get("dim"), said.get("num_layers")))
  fits = _fitting_configs(said)
  use = f"use {' or '.join(fits)}" if fits else "use a config with the checkpoint's model fields"
  return (
    f"the {name} checkpoint is {_size(said.get('dim'), said.get('num_layers'))}"
    f"{f' ({family}-like)' if family else ''} but --config {config} says "
    f"{_size(base.dim, base.num_layers)}: {len(differ)} model fields differ from {source} "
    f"({shown}{more}); {use}, or omit --config"
  )


def dit_config(component: formats.Component, base: DiTConfig, config: str | None):
  """(config, where its architecture was read) for converting a DiT `component`: the
  architecture its files say over `base` (from --config `config`, or the default config when
  None); raises ArchitectureError when a given --config's model differs or the heads are unknown."""
  said, source = formats.dit_architecture(component)
  if config is not None:
    error = _mismatch(component.name, said, source, base, config)
    if error:
      raise ArchitectureError(error)
  if "num_heads" not in said:
    dim = said.get("dim", base.dim)
    if config is not None:
      source += f", num_heads from {config}"
    elif dim % formats.WAN_HEAD_DIM == 0:
      said["num_heads"] = dim // formats.WAN_HEAD_DIM
      source += f", num_heads = dim / {formats.WAN_HEAD_DIM} (Wan's head_dim)"
      print(f"{component.name}: the tensor shapes do not say the number of heads: {source}")
    else:
      raise ArchitectureError(
        f"the {component.name} checkpoint has no config.json and tensor shapes do not say the "
        f"number of heads (dim {dim} is not a multiple of Wan's head_dim "
        f"{formats.WAN_HEAD_DIM}): pass a --config whose model fits the checkpoint"
      )
  return dataclasses.replace(base, **said), source


def _save_component(
  component, config, mesh, rules, path, chunk_bytes, hint, progress, allow_nonfinite, loras=()
) -> dict:
  """Streams one component into an orbax checkpoint at `path`, with `loras` (from
  `lora_files.load`) merged into a DiT expert's params one at a time; returns its record."""
  start = time.time()
  checkpoint, plan, shapes, shardings, naming = loader.prepare(
    component, config, mesh, rules, config_hint=hint
  )
  leaves = jax.tree.leaves(shapes)
  total = sum(x.size * x.dtype.itemsize for x in leaves)
  chunk, chunk_size = {}, 0
  # orbax copies at most this much device -> host at a time (more than the largest shard)
  largest = max(
    math.prod(sh.shard_shape(x.shape)) * x.dtype.itemsize
    for x, sh in zip(leaves, jax.tree.leaves(shardings), strict=True)
  )
  limit = max(chunk_bytes, largest + 1)  # orbax wants strictly more than a request
  context = ocp.Context()
  context.memory.transfer_concurrent_bytes = context.memory.write_concurrent_bytes = limit
  # replicated leaves: split writes across replicas only when big (each split compiles a slice)
  context.array.saving.min_slice_bytes_for_replica_parallel = chunk_bytes
  bar = tqdm.tqdm(total=total, unit="B", unit_scale=True, desc=component.name, disable=not progress)
  with context, bar:
    params = loader.iter_params(checkpoint, plan, shapes, shardings, allow_nonfinite)
    for name, array in params:
      chunk[name] = lora_files.apply_to_param(name, array, loras, config, component.name)
      chunk_size += array.nbytes
      bar.update(array.nbytes)
      if chunk_size >= chunk_bytes:
        ocp.partial.save(path, loader.unflatten(chunk))
        chunk, chunk_size = {}, 0
    if chunk:
      ocp.partial.save(path, loader.unflatten(chunk))
  ocp.partial.finalize(path)
  lora = lora_files.fingerprint(lora_files.serving(loras, component.name))
  return dict(
    kind=component.kind,
    naming=naming,
    **(dict(lora=lora) if lora else {}),
    files=[dict(path=os.path.abspath(f), bytes=os.path.getsize(f)) for f in component.files],
    config=dataclasses.asdict(config),
    source_dtypes=loader.source_dtypes(checkpoint, plan),
    dtype=str(leaves[0].dtype),
    num_params=sum(x.size for x in leaves),
    bytes=total,
    seconds=round(time.time() - start, 3),
  )


def convert(
  src: str,
  out: str,
  *,
  fmt: str = "auto",
  config: str | None = None,
  param_dtype: str | None = None,
  components: tuple[str, ...] | None = None,
  chunk_mb: int = 16,
  progress: bool = True,
  allow_nonfinite: bool = False,
  lora: tuple[str, ...] = (),
) -> dict:
  """Converts every component found below `src` into `out`; returns the record as written.
  `config` (a config file[:arg]; None: DEFAULT_CONFIG) adds what the files do not say; `lora`
  ('[high=|low=]PATH[:SCALE]' each) are merged into the DiT experts."""
  requests = [lora_files.parse(spec) for spec in lora]
  start = time.time()
  out = os.path.abspath(out.rstrip("/"))
  if os.path.exists(out):
    raise FileExistsError(f"--out {out} already exists; remove it or pick another directory")
  spec = config or DEFAULT_CONFIG
  cfg = config_file.load(spec)
  variant = cfg.model.get("self_attention", "full")
  fmt, found = formats.find_components(src, fmt, variant)
  if components is not None:
    unknown = sorted(set(components) - {c.name for c in found})
    if unknown:
      raise ValueError(f"components {unknown} not found in {src}; found {[c.name for c in found]}")
    found = [c for c in found if c.name in components]
  models = []  # every architecture is checked before anything is converted
  for component in found:
    model_config, architecture = formats.model_config(component.kind, cfg, param_dtype), None
    loras = ()
    if component.kind == "dit":
      model_config, architecture = dit_config(component, model_config, config)
      loras = lora_files.load(requests, model_config)
    models.append((component, model_config, architecture, loras))
  experts = {c.name for c, *_ in models if c.kind == "dit"}
  for request in requests:
    if not experts & set(request.experts):
      raise lora_files.LoraFileError(
        f"{request.path}: no {request.experts[0]} expert to merge into"
      )
  mesh = sharding.make_mesh(cfg.mesh)
  tmp = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.partial")
  shutil.rmtree(tmp, ignore_errors=True)  # a previous, killed attempt
  os.makedirs(tmp)
  try:
    record = dict(
      format=fmt, src=os.path.abspath(src), config=spec, param_dtype=param_dtype, components={}
    )
    for component, model_config, architecture, loras in models:
      entry = _save_component(
        component,
        model_config,
        mesh,
        cfg.logical_rules,
        os.path.join(tmp, component.name),
        chunk_mb << 20,
        spec,
        progress,
        allow_nonfinite,
        loras,
      )
      if architecture:
        entry["architecture"] = architecture
      record["components"][component.name] = entry
    record["seconds"] = round(time.time() - start, 3)
    with open(os.path.join(tmp, store.RECORD), "w") as f:
      json.dump(record, f, indent=2)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return store.info(out)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--src", required=True, help="checkpoint folder (or file's folder)")
  parser.add_argument("--format", default="auto", choices=("auto", *formats.FORMATS))
  parser.add_argument(
    "--config",
    default=None,
    help="config file[:arg]: what the checkpoint does not say (default: wan22_t2v_a14b.py)",
  )
  parser.add_argument("--out", required=True, help="output directory (must not exist)")
  parser.add_argument("--param_dtype", default=None, help="e.g. bfloat16 (default: the config's)")
  parser.add_argument("--components", default=None, help="comma list, e.g. high,low")
  parser.add_argument("--chunk_mb", type=int, default=16, help="MB per orbax partial save")
  parser.add_argument("--no_progress", action="store_true")
  parser.add_argument(
    "--allow_nonfinite", action="store_true", help="convert NaN/Inf weights instead of failing"
  )
  parser.add_argument(
    "--lora",
    action="append",
    default=[],
    help="[high=|low=]PATH[:SCALE]: a Wan LoRA .safetensors merged into the DiT experts",
  )
  args = parser.parse_args(argv)
  try:
    return convert(
      args.src,
      args.out,
      fmt=args.format,
      config=args.config,
      param_dtype=args.param_dtype,
      components=None if args.components is None else tuple(args.components.split(",")),
      chunk_mb=args.chunk_mb,
      progress=not args.no_progress,
      allow_nonfinite=args.allow_nonfinite,
      lora=tuple(args.lora),
    )
  except ArchitectureError as e:  # one line, no traceback
    parser.exit(2, f"{parser.prog}: error: {e}\n")
  except lora_files.LoraFileError as e:
    parser.exit(2, f"{parser.prog}: error: --lora {e}\n")


if __name__ == "__main__":
  main()
