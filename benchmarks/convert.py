"""Peak host memory and time of weight conversion vs checkpoint size on disk.

  python benchmarks/convert.py                      # ~1.3 GB bf16 DiT (A14B at 1/4 width)
  python benchmarks/convert.py --layers 8 --naive   # smaller, plus the load-everything baseline

Writes a random DiT with original Wan names as bf16 safetensors shards plus an index (the Wan2.2
`high_noise_model/` layout) to a temp dir, then converts it in a fresh subprocess with the CLI
(`--param_dtype bfloat16`) and reads that process's peak RSS (getrusage); the same run on a
1-layer checkpoint gives the constant. Target: peak - constant < size / 4. On CPU the
"devices" are host memory, so the converted params count too: the orbax chunking keeps them to
about one chunk (`--chunk_mb`) or the largest parameter, whichever is larger.
"reader only" reads every device's slice of every parameter on the host and drops it: the
host-side cost when the devices are accelerators (their arrays live in HBM, not in host RSS).
`--naive` adds the baseline that reads every tensor into memory and converts with
`keymap.convert` (what a non-streaming converter does).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
from configs import wan22_t2v_a14b

def get_config(arg=None):
  config = wan22_t2v_a14b.get_config(arg)
  config.model.update(dim={dim}, num_heads={heads}, ffn_dim={ffn}, num_layers={layers})
  config.mesh.fsdp = -1
  return config
"""

# Every child prints its peak RSS (KB) as "PEAK n".
_PRELUDE = """
import os, resource, sys
import jax
import numpy as np
from flax import traverse_util
from holocine_jax import config_file, convert
from holocine_jax.weights import formats, keymap, reader
jax.devices()
def report(tag):
  print(tag, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""

_CHILD_CONVERT = """
convert.main(sys.argv[1:])
report("PEAK")
"""

_SETUP = """
from holocine_jax import sharding
from holocine_jax.weights import loader
src, spec = sys.argv[1:3]
_, (component, *_) = formats.find_components(src, "wan")
cfg = config_file.load(spec)
config = formats.model_config("dit", cfg, "bfloat16")
mesh = sharding.make_mesh(cfg.mesh)
checkpoint, plan, shapes, shardings, _ = loader.prepare(component, config, mesh, cfg.logical_rules)
"""

# what build_param reads on the host, without placing it on (CPU) devices
_CHILD_READ = (
  _SETUP
  + """
flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(shapes).items()}
flat_shardings = {"/".join(k): v for k, v in traverse_util.flatten_dict(shardings).items()}
for path, sources in plan.items():
  spec = flat[path]
  for index in flat_shardings[path].addressable_devices_indices_map(spec.shape).values():
    keymap.read_param(checkpoint, sources, spec, index, done=checkpoint.release)
report("PEAK")
"""
)

_CHILD_NAIVE = (
  _SETUP
  + """
state = {k: np.array(v) for k, v in checkpoint.items()}
params = keymap.convert(state, formats.key_map("dit", state, config)[1], shapes)
report("PEAK")
"""
)


def _dit_state(dim, heads, ffn, layers, text_dim=4096, freq_dim=256, channels=16):
  """{original Wan key: shape} of a DiT (names as in HoloCine's / Wan's safetensors)."""
  shapes = {
    "patch_embedding.weight": (dim, channels, 1, 2, 2),
    "patch_embedding.bias": (dim,),
    "time_embedding.0.weight": (dim, freq_dim),
    "time_embedding.0.bias": (dim,),
    "time_embedding.2.weight": (dim, dim),
    "time_embedding.2.bias": (dim,),
    "time_projection.1.weight": (6 * dim, dim),
    "time_projection.1.bias": (6 * dim,),
    "text_embedding.0.weight": (dim, text_dim),
    "text_embedding.0.bias": (dim,),
    "text_embedding.2.weight": (dim, dim),
    "text_embedding.2.bias": (dim,),
    "head.modulation": (1, 2, dim),
    "head.head.weight": (4 * channels, dim),
    "head.head.bias": (4 * channels,),
  }
  for i in range(layers):
    b = f"blocks.{i}."
    for attn in ("self_attn", "cross_attn"):
      for p in "qkvo":
        shapes[f"{b}{attn}.{p}.weight"] = (dim, dim)
        shapes[f"{b}{attn}.{p}.bias"] = (dim,)
      shapes[f"{b}{attn}.norm_q.weight"] = (dim,)
      shapes[f"{b}{attn}.norm_k.weight"] = (dim,)
    shapes.update({
      f"{b}norm3.weight": (dim,), f"{b}norm3.bias": (dim,),
      f"{b}ffn.0.weight": (ffn, dim), f"{b}ffn.0.bias": (ffn,),
      f"{b}ffn.2.weight": (dim, ffn), f"{b}ffn.2.bias": (dim,),
      f"{b}modulation": (1, 6, dim),
    })  # fmt: skip
  return shapes


def write_checkpoint(folder, shapes, shard_bytes=400 << 20):
  """bf16 safetensors shards of about `shard_bytes` plus diffusers' index.json."""
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  shards, current, size = [], {}, 0
  for key, shape in shapes.items():
    current[key] = shape
    size += 2 * int(np.prod(shape))
    if size >= shard_bytes:
      shards.append(current)
      current, size = {}, 0
  shards.append(current) if current else None
  weight_map = {}
  for n, shard in enumerate(shards):
    name = f"diffusion_pytorch_model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
    tensors = {
      k: (rng.standard_normal(s, np.float32) * 0.02).astype(ml_dtypes.bfloat16)
      for k, s in shard.items()
    }
    save_file(tensors, os.path.join(folder, name))
    weight_map.update(dict.fromkeys(shard, name))
    del tensors
  with open(os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)


def _child(code, devices, *args) -> tuple[float, float]:
  """(peak RSS MB, seconds) of `code` run in a fresh Python on `devices` CPU devices."""
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  start = time.time()
  proc = subprocess.run(
    [sys.executable, "-c", _PRELUDE + code, *args],
    env=env,
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  seconds = time.time() - start
  if proc.returncode:
    raise RuntimeError(proc.stderr[-3000:])
  peak = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK")]
  return int(peak[-1]) / 1024, seconds


def _write(tmp, args, layers) -> tuple[str, str, float]:
  """(source folder, config file, MB on disk) of a generated checkpoint with `layers` blocks."""
  src = os.path.join(tmp, f"src{layers}")
  folder = os.path.join(src, "high_noise_model")
  write_checkpoint(folder, _dit_state(args.dim, args.heads, args.ffn, layers))
  size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 2**20
  config = os.path.join(tmp, f"config{layers}.py")
  with open(config, "w") as f:
    f.write(CONFIG.format(dim=args.dim, heads=args.heads, ffn=args.ffn, layers=layers))
  return src, config, size


def _runs(tmp, args, src, config) -> dict[str, tuple[float, float]]:
  out = os.path.join(tmp, f"out-{os.path.basename(src)}")
  argv = ["--src", src, "--format", "wan", "--config", config, "--param_dtype", "bfloat16"]
  argv += ["--out", out, "--no_progress", "--chunk_mb", str(args.chunk_mb)]
  runs = {
    "streaming convert -> orbax": _child(_CHILD_CONVERT, args.devices, *argv),
    "reader only (host side on TPU)": _child(_CHILD_READ, args.devices, src, config),
  }
  if args.naive:
    runs["naive: read all + keymap.convert"] = _child(_CHILD_NAIVE, args.devices, src, config)
  return runs


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--dim", type=int, default=1280)
  parser.add_argument("--heads", type=int, default=10)
  parser.add_argument("--ffn", type=int, default=3456)
  parser.add_argument("--layers", type=int, default=30)
  parser.add_argument("--chunk_mb", type=int, default=16)
  parser.add_argument("--devices", type=int, default=1, help="virtual CPU devices (TPU host: 4-8)")
  parser.add_argument("--naive", action="store_true")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
    src, config, size = _write(tmp, args, args.layers)
    src1, config1, size1 = _write(tmp, args, 1)
    big, small = _runs(tmp, args, src, config), _runs(tmp, args, src1, config1)
  print(
    f"\nDiT dim {args.dim}, ffn {args.ffn}, bf16: {args.layers} layers = {size:.0f} MB vs 1 layer ="
    f" {size1:.0f} MB (the constant: imports, jax, orbax, tracing); {args.devices} CPU device(s),"
    f" chunk {args.chunk_mb} MB"
  )
  print(f"| {'run':34s} | peak MB | 1-layer peak MB | extra MB | extra / size | seconds | MB/s |")
  print(f"| {'-' * 34} | ------- | --------------- | -------- | ------------ | ------- | ---- |")
  for name, (peak, seconds) in big.items():
    extra = peak - small[name][0]
    print(
      f"| {name:34s} | {peak:7.0f} | {small[name][0]:15.0f} | {extra:8.0f} |"
      f" {extra / (size - size1):12.2f} | {seconds:7.1f} | {size / seconds:4.0f} |"
    )
  print(f"target: extra < size / 4 = {size / 4:.0f} MB")


if __name__ == "__main__":
  main()
