"""Training entry point.

  python -m holocine_jax.train --config configs/tiny.py --workdir /tmp/holocine_tiny
  python -m holocine_jax.train --config configs/tiny.py:attention=sparse,steps=400 \
      --workdir /tmp/t --set train.log_every=20 --set mesh.fsdp=2
  python -m holocine_jax.train --config configs/holocine_a14b.py:attention=sparse,lora=64 \
      --workdir /data/lora_high --set train.init_from=/data/converted --set train.expert=high

Re-running with the same workdir resumes from its newest checkpoint (same data stream). With
`distributed.initialize=True` (TPU VMs: see launch/), every host runs this same command.
`workdir/config.json` keeps the config of the run; a rerun compares its config first and refuses
changes that break the resume (model, data stream, batch, training seed: `FIXED`) naming the
keys, unless `--allow_config_change`; other changes (steps, learning rate, mesh) are printed.
`train.init_from` starts a new run from a converted folder or another workdir (full, or LoRA with
`lora=RANK`): see training/init_from.py; a rerun must name the same source.
Exit codes: 0 trained to `train.num_steps`; 143 (128 + SIGTERM) stopped at a preemption notice
after saving (rerun to resume); 1 an error.
"""

import argparse
import json
import os
import sys

import jax

from holocine_jax import config_file


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--config", required=True, help="config file, e.g. configs/tiny.py[:arg]")
  p.add_argument("--workdir", required=True, help="checkpoints, TensorBoard events, config.json")
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override, e.g. train.num_steps=50",
  )
  p.add_argument(
    "--allow_config_change",
    action="store_true",
    help="resume although model / data / batch / seed settings differ from workdir/config.json",
  )
  return p.parse_args(argv)


# Config keys (and block prefixes) a workdir's run cannot change: parameter and optimizer shapes,
# the data stream (same samples in the same order) and the training randomness.
FIXED = ("model.", "data.", "train.global_batch", "train.seed", "train.expert")


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def check_config_change(stored: dict, config: dict, allow: bool) -> list[str]:
  """The keys whose values differ between a workdir's stored config and `config`; raises
  ValueError naming the FIXED ones among them unless `allow`."""
  old, new = _flat(stored), _flat(config)
  changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
  fixed = [k for k in changed if k.startswith(FIXED)]
  if fixed and not allow:
    details = "; ".join(
      f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}" for k in fixed
    )
    raise ValueError(
      f"the config differs from the one this workdir was trained with in keys that the resume "
      f"cannot change ({details}). Use a new --workdir, restore the values, or pass "
      "--allow_config_change to resume anyway"
    )
  return changed


def initialize_distributed(dist) -> None:
  """jax.distributed.initialize from the `distributed` block (empty fields: autodetect)."""
  if not dist.initialize:
    return
  kwargs = {}
  if dist.coordinator_address:
    kwargs["coordinator_address"] = dist.coordinator_address
  if dist.num_processes > 0:
    kwargs["num_processes"] = dist.num_processes
  if dist.process_id >= 0:
    kwargs["process_id"] = dist.process_id
  jax.distributed.initialize(**kwargs)


PREEMPTED_EXIT_CODE = 143


def exit_code(result) -> int:
  """The process exit code for a `loop.TrainResult`: preemption is not completion."""
  return PREEMPTED_EXIT_CODE if result.preempted else 0


def main(argv=None) -> int:
  args = parse_args(argv)
  config = config_file.load(args.config, args.set)
  from holocine_jax.model.config import DiTConfig
  from holocine_jax.training import init_from, loop

  loop.check_config(config)
  initialize_distributed(config.distributed)
  init_from.resolve(config, args.workdir, DiTConfig.from_config(config.model))  # before writing
  config_json = json.loads(config.to_json_best_effort())
  path = os.path.join(args.workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      changed = check_config_change(json.load(f), config_json, args.allow_config_change)
    if changed:
      print(f"config changes since the last run of {args.workdir}: {changed}", flush=True)
  os.makedirs(args.workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump(config_json, f, indent=2)
  result = loop.train(config, args.workdir)
  if result.losses:
    last = max(result.losses)
    what = "preempted" if result.preempted else "done"
    print(f"{what}: step {last}, loss {result.losses[last]:.5f}", flush=True)
  return exit_code(result)


if __name__ == "__main__":
  sys.exit(main())
