"""Training entry point.

  python -m holocine_jax.train --config configs/tiny.py --workdir /tmp/holocine_tiny
  python -m holocine_jax.train --config configs/tiny.py:attention=sparse,steps=400 \
      --workdir /tmp/t --set train.log_every=20 --set mesh.fsdp=2

Re-running with the same workdir resumes from its newest checkpoint (same data stream). With
`distributed.initialize=True` (TPU VMs: see launch/), every host runs this same command.
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
  return p.parse_args(argv)


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
  from holocine_jax.training import loop

  loop.check_config(config)
  initialize_distributed(config.distributed)
  os.makedirs(args.workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(args.workdir, "config.json"), "w") as f:
      json.dump(json.loads(config.to_json_best_effort()), f, indent=2)
  result = loop.train(config, args.workdir)
  if result.losses:
    last = max(result.losses)
    what = "preempted" if result.preempted else "done"
    print(f"{what}: step {last}, loss {result.losses[last]:.5f}", flush=True)
  return exit_code(result)


if __name__ == "__main__":
  sys.exit(main())
