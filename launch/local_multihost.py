"""Simulates a multi-host job on one machine: N CPU processes, localhost coordinator.

Each process runs `python -m holocine_jax.train` with `distributed.*` set and its own virtual
CPU devices, exactly as every TPU VM worker runs it; logs go to <workdir>/logs/process_<i>.log.
  python launch/local_multihost.py --processes 2 --devices_per_process 4 \
      --config configs/tiny.py:steps=20 --workdir /tmp/two_hosts
Extra `--set key=value` overrides are passed through. Exits non-zero if any process fails.
"""

import argparse
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(
  config, workdir, *, processes=2, devices_per_process=4, overrides=(), xla_flags="", timeout=600
):
  """Runs the processes to completion (killing all if one fails); returns their exit codes."""
  os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
  address = f"localhost:{free_port()}"
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process} {xla_flags}",
    PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
  )
  procs = []
  for i in range(processes):
    cmd = [sys.executable, "-m", "holocine_jax.train", "--config", config, "--workdir", workdir]
    for item in (
      *overrides,
      "distributed.initialize=true",
      f"distributed.coordinator_address={address}",
      f"distributed.num_processes={processes}",
      f"distributed.process_id={i}",
    ):
      cmd += ["--set", item]
    log = open(os.path.join(workdir, "logs", f"process_{i}.log"), "w")  # noqa: SIM115
    procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
  deadline = time.monotonic() + timeout
  while any(p.poll() is None for p, _ in procs):
    failed = any(p.poll() not in (None, 0) for p, _ in procs)
    if failed or time.monotonic() > deadline:  # one host died: the others would hang
      for p, _ in procs:
        if p.poll() is None:
          p.kill()
    time.sleep(0.2)
  codes = [p.wait() for p, _ in procs]
  for _, log in procs:
    log.close()
  return codes


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--processes", type=int, default=2)
  p.add_argument("--devices_per_process", type=int, default=4)
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  args = p.parse_args()
  codes = launch(
    args.config,
    args.workdir,
    processes=args.processes,
    devices_per_process=args.devices_per_process,
    overrides=args.set,
  )
  print(f"exit codes: {codes}; logs in {os.path.join(args.workdir, 'logs')}")
  sys.exit(max(abs(c) for c in codes))


if __name__ == "__main__":
  main()
