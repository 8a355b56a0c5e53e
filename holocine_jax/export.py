"""Exports DiT experts to the files PyTorch loads: HoloCine, Wan2.2 or diffusers safetensors.

  python -m holocine_jax.export --checkpoint /data/holocine_full --format diffusers --out /data/hf
  python -m holocine_jax.export --checkpoint /tmp/holocine_tiny --step 200 --format holocine \
      --dtype bfloat16 --out /tmp/tiny_holocine

--checkpoint is a converted folder (what `python -m holocine_jax.convert` writes: its `high` and
`low` experts) or a training workdir (`python -m holocine_jax.train`: its newest checkpoint or
--step N, the config from its config.json or --config; a model trained for every timestep,
`train.expert=all`, is written as both experts). Only the params are restored, sharded over all
devices; each output tensor is then sliced, cast, gathered and written on its own, so a host
holds one tensor at a time and process 0 writes (multi-host: pass --distributed on every host).
Layouts, the inverse of what the converter reads (weights/formats.py):
  holocine   {full,sparse}_{high,low}_noise.safetensors (variant: the model's self_attention)
  wan        {high,low}_noise_model/diffusion_pytorch_model*.safetensors, index, Wan config.json
  diffusers  transformer{,_2}/diffusion_pytorch_model*.safetensors, index, config.json
             (loads with WanTransformer3DModel.from_pretrained(out, subfolder="transformer"))
A LoRA training workdir (`lora=RANK`) is written as its adapters, one LoRA file per expert
(`{high,low}_noise_lora.safetensors`; a model trained for every step gives both the same
adapters) in `--format diffusers` (peft names, alpha / rank folded into lora_B: loads with
WanTransformer3DModel.load_lora_adapter / WanPipeline.load_lora_weights) or `--format wan`
(original names with `diffusion_model.`, lora_down / lora_up / alpha: ComfyUI's LoRA loader);
`--merge` writes the merged experts (the base named by its init_from.json + the adapters) in the
format's usual layout instead.
The umT5 text encoder and the VAE are not trained here: take them from the base checkpoint.
Files go to `.<out>.partial` and are renamed to --out at the end; `export.json` records the
request, and the same request over a finished --out does nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time

import jax
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils

from holocine_jax import sharding
from holocine_jax.files import write_json
from holocine_jax.model.config import DiTConfig
from holocine_jax.weights import diffusers_dit, formats, lora_files, store, wan_dit, writer

RECORD = "export.json"
DTYPES = ("keep", "float32", "bfloat16")
RULES = {"diffusers": diffusers_dit.RULES, "wan": wan_dit.RULES, "holocine": wan_dit.RULES}
SHARD_NAME = "diffusion_pytorch_model"


def torch_shape(c: DiTConfig, path: str) -> tuple[int, ...]:
  """PyTorch shape of a DiT param (one layer's for the stacked blocks), the same in the diffusers
  and the original Wan layout; every param not listed is a [dim] vector (biases and norms)."""
  d, head = c.dim, c.out_channels * math.prod(c.patch_size)
  shapes = {
    "patch_embedding/kernel": (d, c.in_channels, *c.patch_size),
    "time_embedding_1/kernel": (d, c.freq_dim),
    "time_embedding_2/kernel": (d, d),
    "time_projection/kernel": (6 * d, d),
    "time_projection/bias": (6 * d,),
    "text_embedding_1/kernel": (d, c.text_dim),
    "text_embedding_2/kernel": (d, d),
    **{f"blocks/{a}/{p}/kernel": (d, d) for a in ("self_attn", "cross_attn") for p in "qkvo"},
    "blocks/ffn_in/kernel": (c.ffn_dim, d),
    "blocks/ffn_in/bias": (c.ffn_dim,),
    "blocks/ffn_out/kernel": (d, c.ffn_dim),
    "blocks/modulation": (1, 6, d),
    "head_modulation": (1, 2, d),
    "head/kernel": (head, d),
    "head/bias": (head,),
  }
  return shapes.get(path, (d,))


def diffusers_config(c: DiTConfig) -> dict:
  """`config.json` of diffusers' WanTransformer3DModel (text-to-video, no image inputs)."""
  return dict(
    _class_name="WanTransformer3DModel",
    _diffusers_version="0.35.0",
    patch_size=list(c.patch_size),
    num_attention_heads=c.num_heads,
    attention_head_dim=c.head_dim,
    in_channels=c.in_channels,
    out_channels=c.out_channels,
    text_dim=c.text_dim,
    freq_dim=c.freq_dim,
    ffn_dim=c.ffn_dim,
    num_layers=c.num_layers,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=c.eps,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=c.rope_max_positions,
    pos_embed_seq_len=None,
  )


def wan_config(c: DiTConfig) -> dict:
  """`config.json` of Wan's own WanModel (which fixes patch (1, 2, 2) and text_dim 4096)."""
  return dict(
    _class_name="WanModel",
    _diffusers_version="0.33.0",
    model_type="t2v",
    text_len=512,
    in_dim=c.in_channels,
    dim=c.dim,
    ffn_dim=c.ffn_dim,
    freq_dim=c.freq_dim,
    out_dim=c.out_channels,
    num_heads=c.num_heads,
    num_layers=c.num_layers,
    eps=c.eps,
  )


CONFIGS = {"diffusers": diffusers_config, "wan": wan_config}


def location(fmt: str, component: str, variant: str) -> tuple[str, str | None]:
  """(folder below --out, file name or None for diffusers-style shards): the converter's glob
  for this component in weights/formats.py, read backwards."""
  pattern = next(p for name, _, p in formats.LAYOUTS[fmt] if name == component)
  folder, name = os.path.split(pattern.format(variant=variant).removeprefix("**/"))
  return folder, None if "*" in name else name


def _lookup(flat: dict):
  """(path, layer) -> (array, layer to slice or None) in a scanned or unrolled (`blocks_N`) tree."""

  def param(path, layer):
    if path in flat:
      return flat[path], layer
    return flat[path.replace("blocks/", f"blocks_{layer}/", 1)], None

  return param


def _file_names(items: list, single: str | None, itemsize: int, shard_bytes: int) -> dict:
  """{file name: its tensors}: the one named file, or diffusers-style shards."""
  if single:
    return {single: items}
  groups = writer.shards(items, itemsize, shard_bytes)
  if len(groups) == 1:
    return {f"{SHARD_NAME}.safetensors": items}
  n = len(groups)
  return {f"{SHARD_NAME}-{i + 1:05d}-of-{n:05d}.safetensors": g for i, g in enumerate(groups)}


def write_expert(
  params, config: DiTConfig, fmt: str, component: str, out: str | None, *, dtype, shard_bytes
) -> dict:
  """Writes one expert's params in `fmt`'s names and layout below `out` (None: this process
  only takes part in the gathers); returns {file: number of tensors}."""
  if config.rope_theta != 10000.0:
    raise ValueError(f"the PyTorch Wan models fix RoPE theta at 10000, not {config.rope_theta}")
  target, _ = formats.abstract("dit", dataclasses.replace(config, scan_layers=True))
  items = writer.tensors(RULES[fmt], target, lambda path: torch_shape(config, path))
  param = _lookup({"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()})
  dtype = np.dtype(dtype)
  folder, single = location(fmt, component, config.self_attention)
  files = _file_names(items, single, dtype.itemsize, shard_bytes)
  path = None if out is None else os.path.join(out, folder)
  if path is not None:
    os.makedirs(path, exist_ok=True)
  for name, group in files.items():
    target_file = None if path is None else os.path.join(path, name)
    writer.write_safetensors(target_file, group, dtype, writer.source_values(group, param, dtype))
  if path is not None and len(files) > 1:
    total = sum(int(np.prod(t.shape)) * dtype.itemsize for t in items)
    weight_map = {t.source.key: name for name, group in files.items() for t in group}
    index = os.path.join(path, f"{SHARD_NAME}.safetensors.index.json")
    write_json(index, dict(metadata=dict(total_size=total), weight_map=weight_map))
  if path is not None and fmt in CONFIGS:
    write_json(os.path.join(path, "config.json"), CONFIGS[fmt](config))
  return {os.path.join(folder, name): len(group) for name, group in files.items()}


def _status(out: str, request: dict) -> tuple[int, dict | None]:
  """(0, None) for a new --out; (1, record) when it holds this request; (2, record) otherwise."""
  if not os.path.exists(out):
    return 0, None
  path = os.path.join(out, RECORD)
  record = None
  if os.path.isfile(path):
    with open(path) as f:
      record = json.load(f)
  same = record is not None and {k: record.get(k) for k in request} == request
  return (1 if same else 2), record


def _summary(record: dict) -> str:
  return ", ".join(f"{k}={record.get(k)}" for k in ("source", "step", "format", "dtype"))


def _agree(value: int) -> int:
  """Process 0's `value` on every process."""
  if jax.process_count() == 1:
    return value
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def _write_experts(source: store.Source, fmt, out: str | None, dtype, shard_bytes, mesh, rules):
  """Every expert of `source` (a LoRA workdir's merged) in `fmt`'s layout; returns {expert:
  {file: number of tensors}}."""
  files = {}
  for names in source.experts:
    params = source.load(names, mesh, rules)
    kinds = {x.dtype for x in jax.tree.leaves(params)}
    if dtype == "keep" and len(kinds) > 1:
      raise ValueError(f"params mix dtypes {sorted(map(str, kinds))}; pass --dtype")
    out_dtype = kinds.pop() if dtype == "keep" else np.dtype(dtype)
    for name in names:
      files[name] = write_expert(
        params, source.config, fmt, name, out, dtype=out_dtype, shard_bytes=shard_bytes
      )
    del params
  return files


def lora_file(name: str) -> str:
  """The LoRA file of expert `name` below --out."""
  return f"{name}_noise_lora.safetensors"


def _write_loras(source: store.Source, fmt: str, out: str | None, dtype, mesh, rules) -> dict:
  """A LoRA workdir's adapters as one LoRA file per expert (both names of a model trained for
  every step carry the same adapters); returns {expert: {file: number of tensors}}."""
  (names,) = source.experts
  adapters = store.workdir_params(source.path, source.step, source.lora, mesh, rules)
  kinds = {x.dtype for x in jax.tree.leaves(adapters)}
  out_dtype = kinds.pop() if dtype == "keep" and len(kinds) == 1 else np.dtype(dtype)
  files = {}
  for name in names:
    path = None if out is None else os.path.join(out, lora_file(name))
    n = lora_files.write(path, adapters, fmt, alpha=source.lora.lora_alpha, dtype=out_dtype)
    files[name] = {lora_file(name): n}
  return files


def export(
  checkpoint: str,
  out: str,
  *,
  fmt: str,
  step: int | None = None,
  dtype: str = "keep",
  config: str | None = None,
  shard_mb: float = 10_000,
  merge: bool = False,
) -> dict:
  """Writes the DiT experts of `checkpoint` to `out` in format `fmt` (a LoRA workdir: its
  adapters as LoRA files, or with `merge` the merged experts); returns the record (on process
  0; other processes get None when a finished --out leaves nothing to do)."""
  start = time.time()
  if fmt not in RULES:
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(RULES)}")
  if dtype not in DTYPES:
    raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
  source = store.source(checkpoint, step, config)
  if merge and source.lora is None:
    raise ValueError(f"--merge is for LoRA training workdirs; {checkpoint} holds full weights")
  adapters_only = source.lora is not None and not merge
  if adapters_only and fmt not in lora_files.FORMATS:
    raise ValueError(
      f"LoRA files are written in {' or '.join(lora_files.FORMATS)} names, not {fmt}; or pass "
      "--merge for the merged experts"
    )
  out = os.path.abspath(out.rstrip("/"))
  request = dict(source=os.path.abspath(checkpoint), step=source.step, format=fmt, dtype=dtype)
  if merge:
    request["merge"] = True
  writes = jax.process_index() == 0
  status, record = _status(out, request) if writes else (0, None)
  status = _agree(status)
  if status == 1:
    return record
  if status == 2:
    held = f" and holds another export ({_summary(record)})" if record else ""
    raise FileExistsError(f"--out {out} already exists{held}; remove it or pick another directory")
  mesh = sharding.make_mesh({"fsdp": -1})
  rules = sharding.DEFAULT_LOGICAL_RULES
  with writer.atomic_dir(out, writes) as tmp:
    if adapters_only:
      files = _write_loras(source, fmt, tmp, dtype, mesh, rules)
    else:
      files = _write_experts(source, fmt, tmp, dtype, int(shard_mb * 2**20), mesh, rules)
    model = source.config if source.lora is None or merge else source.lora
    record = dict(request, kind=source.kind, config=dataclasses.asdict(model), files=files)
    record["seconds"] = round(time.time() - start, 3)
    record = json.loads(json.dumps(record))  # as a rerun reads it back
    if tmp is not None:
      write_json(os.path.join(tmp, RECORD), record)
  return record


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--checkpoint", required=True, help="converted folder or training workdir")
  parser.add_argument("--step", type=int, default=None, help="training step (default: newest)")
  parser.add_argument("--format", required=True, choices=tuple(RULES))
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--dtype", default="keep", choices=DTYPES, help="tensor dtype in the files")
  parser.add_argument(
    "--config", default=None, help="training config file[:arg] (default: the workdir's config.json)"
  )
  parser.add_argument(
    "--shard_mb", type=float, default=10_000, help="MiB per shard (wan, diffusers)"
  )
  parser.add_argument(
    "--merge",
    action="store_true",
    help="LoRA workdir: write the merged experts instead of the adapters (LoRA files)",
  )
  parser.add_argument("--distributed", action="store_true", help="jax.distributed.initialize()")
  args = parser.parse_args(argv)
  if args.distributed:
    jax.distributed.initialize()
  return export(
    args.checkpoint,
    args.out,
    fmt=args.format,
    step=args.step,
    dtype=args.dtype,
    config=args.config,
    shard_mb=args.shard_mb,
    merge=args.merge,
  )


if __name__ == "__main__":
  main()
