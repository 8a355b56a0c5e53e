"""Real-size plans for TPU slices: every job compiled deviceless at full depth (40 DiT layers).

  python benchmarks/tpu_plan.py                      # every plan: hours on 2 CPU cores
  python benchmarks/tpu_plan.py --plans vae,text

Each row is `holocine_jax.planning.search.plan` (what `python -m holocine_jax.plan` runs): the
job's own jitted function on abstract inputs sharded over the slice, mesh searched unless the
plan pins it, fit = peak per chip <= 80% of the chip's usable HBM. Plans:
  sample-*   A14B expert denoising stage with CFG (2 rows), 241 frames at 480x832 (95,160
             tokens), 5 shots, on v5p-8
  train-*    A14B expert train step (bf16 compute, fp32 master params, AdamW, remat), same scene,
             global batch 16, on v5p-64
  minute     961 frames (375,960 tokens), 13 shots, sparse sampling stage: v5p slices from the
             smallest up, until one fits
  vae, text  the VAE decode of 241 frames at 480x832 and the umT5-XXL encode of 512 tokens (one
             scene + the negative prompt) on one v5p chip
  v5e-train  A14B sparse training on 16 GB v5e chips: slices from the smallest up, with the
             config's rules and with FSDP over the context axis too
  lora-v5p   the LoRA train step (rank 64, frozen bf16 base, adapters alone in AdamW), global
             batch 4, on v5p-8 (fsdp 4) then v5p-16 (fsdp 4 x tensor 2)
  qlora-v5e  the same on an int8 base, global batch 8, on v5e-16, -32, -64 (fsdp 8 x context)
  full-v5p   the full fine-tune (as from init_from), global batch 16, on v5p-32 (fsdp 16) then
             v5p-64 (fsdp 16 x tensor 2)
The fine-tune plans pin their meshes (one full-depth compile per slice) and set remat full.
Mesh column: the axes larger than 1, d/f/c/t = data/fsdp/context/tensor (f16xt2: fsdp 16 x
tensor 2).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compiling for TPU needs no TPU

from holocine_jax import config_file  # noqa: E402
from holocine_jax.planning import programs, search  # noqa: E402

GIB = 2**30
A14B = "configs/holocine_a14b.py"
SCENE = dict(frames=241, height=480, width=832, shots=5)
MINUTE = dict(frames=961, height=480, width=832, shots=13)


def _finetune(arg: str, batch: int, topologies: list[str], mesh: dict) -> dict:
  """An A14B sparse train-step plan (remat full) with config args `arg` on a pinned mesh."""
  return dict(
    config=f"{A14B}:attention=sparse,remat=full{arg}",
    job="train",
    batch=batch,
    topologies=topologies,
    mesh=mesh,
  )


# Every plan: config spec, job, scene, batch (scenes, or the train global batch), topologies
# tried smallest first until one fits, logical rules changed from the config's, and the mesh
# (pinned sizes; absent: searched).
PLANS = {
  "sample-sparse": dict(config=f"{A14B}:attention=sparse", job="sample", topologies=["v5p-8"]),
  "sample-full": dict(config=f"{A14B}:attention=full", job="sample", topologies=["v5p-8"]),
  "train-sparse": dict(
    config=f"{A14B}:attention=sparse,remat=full", job="train", batch=16, topologies=["v5p-64"]
  ),
  "train-full": dict(
    config=f"{A14B}:attention=full,remat=full", job="train", batch=16, topologies=["v5p-64"]
  ),
  "minute": dict(
    config=f"{A14B}:attention=sparse",
    job="sample",
    scene=MINUTE,
    topologies=["v5p-2", "v5p-8", "v5p-16", "v5p-32"],
  ),
  "vae": dict(config=A14B, job="vae", topologies=["v5p-2"]),
  "text": dict(config=A14B, job="text", topologies=["v5p-2"]),
  "v5e-train": dict(
    config=f"{A14B}:attention=sparse,remat=full",
    job="train",
    batch=16,
    topologies=["v5e-64", "v5e-128", "v5e-256"],
  ),
  # FSDP over the context axis too: params and Adam state sharded over fsdp x context.
  "v5e-train-fsdp-context": dict(
    config=f"{A14B}:attention=sparse,remat=full",
    job="train",
    batch=16,
    topologies=["v5e-128"],
    rules={"embed": ["fsdp", "context"]},
  ),
  # Fine-tunes (issue 20), meshes pinned (one full-depth compile per slice; -1: the rest).
  "lora-v5p": _finetune(",lora=64", 4, ["v5p-8", "v5p-16"], dict(fsdp=4, tensor=-1)),
  "qlora-v5e": _finetune(
    ",lora=64,lora_base=int8", 8, ["v5e-16", "v5e-32", "v5e-64"], dict(fsdp=8, context=-1)
  ),
  "full-v5p": _finetune("", 16, ["v5p-32", "v5p-64"], dict(fsdp=16, tensor=-1)),
}


def row(name: str, plan, attention: str) -> str:
  m, f = plan.per_device_bytes, plan.facts
  mesh = "x".join(f"{k[0]}{v}" for k, v in plan.mesh.items() if v > 1) or "1 chip"
  blocks = (
    f"{f['kv_blocks_visited']:,} / {f['kv_blocks_dense']:,}" if "kv_blocks_dense" in f else ""
  )
  peak = f"{m.peak / GIB:.1f} / {plan.hbm_bytes / GIB:.2f} ({plan.fraction:.0%})"
  status = "fits" if plan.fits else ("no: " + plan.error[:60] if plan.error else "no")
  return (
    f"| {name} | {plan.job} | {plan.topology} | {attention} | {'yes' if plan.compiled else 'no'} "
    f"| {mesh} | {peak} | {plan.compile_s:.0f} | {blocks} | {status} |"
  )


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--plans", default=",".join(PLANS), help=f"comma list of {list(PLANS)}")
  p.add_argument("--set", action="append", default=[], help="config override for every plan")
  args = p.parse_args()
  print("| plan | job | topology | attention | compiled | mesh | peak / HBM GiB per chip "
        "| compile s | kv blocks visited / dense | fits |")  # fmt: skip
  print("| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | --- |", flush=True)
  start = time.perf_counter()
  for name in args.plans.split(","):
    p = PLANS[name]
    config = config_file.load(p["config"], args.set)
    rules = p.get("rules", {})
    config.logical_rules = [[k, rules.get(k, axes)] for k, axes in config.logical_rules]
    request = programs.Request(p["job"], batch=p.get("batch", 1), **p.get("scene", SCENE))
    attention = config.model.self_attention if p["job"] in ("sample", "train") else "-"
    for topology_name in p["topologies"]:
      log = lambda message, name=name: print(
        f"# [{time.perf_counter() - start:6.0f} s] {name}: {message}", file=sys.stderr, flush=True
      )
      plan = search.plan(config, request, topology_name, mesh=p.get("mesh"), log=log)
      print(row(name, plan, attention), flush=True)
      if plan.fits:
        break


if __name__ == "__main__":
  main()
