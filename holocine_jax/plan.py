"""Plan a run before renting a TPU slice: compile the job for the slice here, report per-chip HBM.

  python -m holocine_jax.plan --config configs/holocine_a14b.py:attention=sparse --job sample \
      --topology v5p-8
  python -m holocine_jax.plan --config configs/wan22_t2v_a14b.py:batch=16,remat=full --job train \
      --topology v5p-64 --json
  python -m holocine_jax.plan --config configs/holocine_a14b.py:attention=sparse,lora=64,batch=4 \
      --job train --topology v5p-8 --set model.remat_policy=full --json
  python -m holocine_jax.plan --config configs/holocine_a14b.py:attention=sparse,distill=4 \
      --job sample --topology v5p-8     # guidance 1: one row per scene
  python -m holocine_jax.plan --config configs/tiny.py:block=128 --job train --topology v5p-8 \
      --frames 17 --height 64 --width 64 --shots 2 --set mesh.fsdp=2 --set mesh.tensor=2
  python -m holocine_jax.plan --config configs/holocine_a14b.py --job vae --for preprocess \
      --topology v5p-2

Runs on any CPU host (libtpu compiles deviceless). Builds the job's own jitted function (the
train step, a LoRA's with only the adapters in the optimizer and the frozen base apart; the
sampler stage with CFG, or over the scenes alone when both experts sample at guidance 1; the VAE
decode; the umT5 encode) on abstract inputs sharded over the slice's chips and compiles it with
the real TPU compiler. Without `--set mesh.*` it searches the (data, fsdp, context, tensor) split.
`--for preprocess` plans the encoders as `training.preprocess` runs them (VAE encode of uint8
clips, umT5 over scene prompts) on a (data, fsdp) mesh (default: every chip on data); with
`--batch 0` it searches the largest batch that fits and prints the `--batch_size` to preprocess
with. Exit status 1 when the plan does not fit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

from holocine_jax import config_file
from holocine_jax.layout import LayoutError
from holocine_jax.planning import programs, search
from holocine_jax.scene import SceneError

GIB = 2**30


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--config", required=True, help="config file, e.g. configs/holocine_a14b.py[:arg]")
  p.add_argument("--job", required=True, choices=programs.JOBS)
  p.add_argument(
    "--for",
    dest="purpose",
    choices=programs.PURPOSES,
    default="sample",
    help="vae / text: the sampling job's (decode, prompts + negative) or preprocessing's",
  )
  p.add_argument("--topology", required=True, help="TPU slice: v5p-8, v5p-64, v5e-16, v6e-8, ...")
  p.add_argument("--frames", type=int, default=241, help="video frames (snapped to 4t+1)")
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=832)
  p.add_argument("--shots", type=int, default=5, help="shots, evenly cut")
  p.add_argument(
    "--batch",
    type=int,
    default=0,
    help="scenes (0: one), train global batch (0: config's), clips (0: search the largest)",
  )
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override")
  p.add_argument("--fit", type=float, default=0.8, help="fits: peak <= this fraction of HBM")
  p.add_argument(
    "--search_layers", type=int, default=2, help="mesh search depths: N and 2N (0: full)"
  )
  p.add_argument("--max_candidates", type=int, default=8, help="meshes the search may compile")
  p.add_argument("--json", action="store_true", help="print one JSON object")
  return p.parse_args(argv)


def _gib(n: int) -> str:
  return f"{n / GIB:.2f} GiB" if n >= GIB // 8 else f"{n / 2**20:.2f} MiB"


def _logger():
  start = time.perf_counter()
  return lambda message: print(
    f"[{time.perf_counter() - start:6.0f} s] {message}", file=sys.stderr, flush=True
  )


def table(plan) -> str:
  """The plan as a two-column text table."""
  m, f = plan.per_device_bytes, plan.facts
  state = "fits" if plan.fits else "does NOT fit"
  depth = "" if plan.num_layers is None else f"{plan.num_layers} layers, "
  rows = [
    (
      "job",
      f"{plan.job} on {plan.topology}: {plan.chips} chip(s), {_gib(plan.hbm_bytes)} HBM each",
    ),
    ("mesh", " ".join(f"{k}={v}" for k, v in plan.mesh.items()) or "-"),
    ("compiled", f"{'yes' if plan.compiled else 'no'}: {depth}{plan.compile_s} s"),
    (
      "per chip",
      f"{state}: peak {_gib(m.peak)} = {plan.fraction:.1%} of HBM (limit {plan.fit_limit:.0%})",
    ),
    ("  arguments", _gib(m.arguments)),
    ("  outputs", _gib(m.outputs)),
    ("  temporaries", _gib(m.temporaries)),
    ("  aliased", _gib(m.aliased)),
  ]
  if m.resident:
    rows.append(("  resident", f"{_gib(m.resident)} (the other encoder's params)"))
  if "tokens" in f:
    rows.append(("input", f"{f['rows']} rows x {f['tokens']:,} tokens"))
  if "guidance" in f:
    g = f["guidance"]
    cfg = "no negative pass" if g["high"] == g["low"] == 1 else "CFG: 2 rows per scene"
    rows.append(("guidance", f"high {g['high']:g}, low {g['low']:g} ({cfg})"))
  if "lora" in f:
    lora = f["lora"]
    note = f"rank {lora['rank']}, frozen {lora['base']} base" if lora else "none (full fine-tune)"
    rows.append(("lora", note))
  if f.get("microbatches", 1) > 1:
    rows.append(("microbatches", f"{f['microbatches']} sequential (gradients summed)"))
  if "frames" in f:
    rows.append(("input", f"{f['rows']} clips x {f['frames']} frames"))
  if "kv_blocks_dense" in f:
    share = f["kv_blocks_visited"] / f["kv_blocks_dense"]
    rows.append(("shot bound", f"{f['shot_bound_frames']} latent frames"))
    rows.append(
      (
        "kv blocks",
        f"{f['kv_blocks_visited']:,} visited / {f['kv_blocks_dense']:,} dense ({share:.0%})",
      )
    )
  for s in plan.search:
    mesh = " ".join(f"{k}={v}" for k, v in s["mesh"].items())
    note = s.get("error") or f"predicted peak {_gib(s['predicted_peak'])} ({s['compile_s']} s)"
    rows.append(("searched", f"{mesh}: {note}"))
  for p in plan.probes:
    verdict = "fits" if p["fits"] else "does not fit"
    rows.append(
      ("probed", f"batch {p['batch']}: peak {_gib(p['peak'])}, {verdict} ({p['compile_s']} s)")
    )
  if "next_batch" in f:
    rows.append(("next batch", f"{f['next_batch']}: peak {_gib(f['next_peak'])}, does not fit"))
  if "preprocess_command" in f:
    rows.append(("preprocess", f["preprocess_command"]))
  if plan.error:
    rows.append(("error", plan.error))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def preprocess_command(config, request: programs.Request, plan) -> str:
  """The preprocessing command line with the plan's batch, mesh and clip or prompt size."""
  flags = [f"--batch_size {plan.facts['rows']}"]
  if plan.mesh["fsdp"] > 1:
    flags.append(f"--fsdp {plan.mesh['fsdp']}")
  if request.job == "vae":
    flags.append(f"--height {request.height} --width {request.width}")
  else:
    flags.append(f"--text_len {programs.text_len(config, request)}")
  return "python -m holocine_jax.training.preprocess ... " + " ".join(flags)


def main(argv=None):
  args = parse_args(argv)
  if "JAX_PLATFORMS" not in os.environ:
    jax.config.update("jax_platforms", "cpu")  # compiling for TPU needs no TPU: host arrays only
  try:
    config = config_file.load(args.config, args.set)
  except (OSError, KeyError, ValueError, AttributeError) as e:
    sys.exit(f"error: config: {e}")
  pinned = any(item.startswith("mesh.") for item in args.set)
  mesh, log = dict(config.mesh) if pinned else None, _logger()
  try:
    request = programs.Request(
      args.job, args.frames, args.height, args.width, args.shots, args.batch, args.purpose
    )
  except ValueError as e:  # a SceneError, or --for preprocess of a job that is no encoder
    sys.exit(f"error: {e}")
  preprocess = request.purpose == "preprocess"
  try:
    if preprocess and not request.batch:
      result = search.largest_batch(
        config, request, args.topology, mesh=mesh, fit=args.fit, log=log
      )
    else:
      result = search.plan(
        config,
        request,
        args.topology,
        mesh=search.encoder_mesh(args.topology, mesh) if preprocess else mesh,
        fit=args.fit,
        search_layers=args.search_layers,
        max_candidates=args.max_candidates,
        log=log,
      )
  except (search.PlanError, SceneError, LayoutError) as e:
    sys.exit(f"error: {e}")
  if preprocess and result.fits:
    result.facts["preprocess_command"] = preprocess_command(config, request, result)
  print(json.dumps(result.to_json(), indent=2) if args.json else table(result), flush=True)
  return result


if __name__ == "__main__":
  sys.exit(0 if main().fits else 1)
