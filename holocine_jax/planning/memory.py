"""Compiles a program for its mesh's devices and reads per-chip memory, fitting or not.

A program that does not fit fails in the TPU compiler with RESOURCE_EXHAUSTED, in one of two
forms: "... the total memory required for HLO temporaries (4.30T) exceeds available HBM
(95.74G)" (an early check) or "Ran out of memory in memory space hbm. Used 40.48G of 31.25G hbm
..." followed by a usage report. Either becomes a result with the numbers it gives (arguments
counted from the abstract inputs where the message has none), not an exception. A program's
`resident` bytes (buffers its job keeps on the chips outside it) are added to the peak.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

import jax
import numpy as np

from holocine_jax import sharding

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
_SIZE = r"([\d.]+)\s?([KMGTP]?)i?B?\b"


@dataclasses.dataclass(frozen=True)
class Memory:
  """Per-chip bytes: peak = arguments + outputs + temporaries - aliased (donated) buffers
  + resident (what the job holds outside the program, e.g. another model's params)."""

  arguments: int = 0
  outputs: int = 0
  temporaries: int = 0
  aliased: int = 0
  resident: int = 0
  peak: int = 0


@dataclasses.dataclass(frozen=True)
class Compiled:
  """One compile: its memory (from the executable, or parsed from the out-of-memory error)."""

  memory: Memory
  compile_s: float
  out_of_memory: str = ""  # the compiler's message when the program does not fit


def _size(match, group: int = 1) -> int:
  return int(float(match.group(group)) * _UNITS[match.group(group + 1).upper()])


def parse_out_of_memory(message: str, arguments: int) -> Memory:
  """Per-chip memory from a RESOURCE_EXHAUSTED message; `arguments` fills in where it has none."""
  find = lambda pattern: re.search(pattern, message)
  temps = find(rf"HLO temp\w*\s+\(?{_SIZE}")
  args = find(rf"\n\s*arguments\s+{_SIZE}")
  output = find(rf"Output size {_SIZE}(?:; shares {_SIZE} with arguments)?")
  used = find(rf"Used {_SIZE} of {_SIZE} hbm")
  memory = Memory(
    arguments=_size(args) if args else arguments,
    outputs=_size(output) if output else 0,
    temporaries=_size(temps) if temps else 0,
    aliased=_size(output, 3) if output and output.group(3) else 0,
  )
  peak = memory.arguments + memory.outputs + memory.temporaries - memory.aliased
  return dataclasses.replace(memory, peak=_size(used) if used else peak)


def argument_bytes(args) -> int:
  """Bytes of the largest per-chip shard set of abstract (ShapeDtypeStruct) arguments."""
  total = 0
  for x in jax.tree.leaves(args):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += math.prod(shape) * np.dtype(x.dtype).itemsize
  return total


def compile_program(program, mesh, rules) -> Compiled:
  """Lowers and compiles `program` under the mesh and rules; memory per chip."""
  start = time.perf_counter()
  resident = lambda m: dataclasses.replace(
    m, resident=program.resident, peak=m.peak + program.resident
  )
  try:
    with sharding.activate(mesh, rules):
      compiled = program.jitted.lower(*program.args).compile()
  except Exception as e:  # the compiler's error type is private to jax
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    memory = parse_out_of_memory(str(e), argument_bytes(program.args))
    return Compiled(resident(memory), time.perf_counter() - start, str(e))
  seconds = time.perf_counter() - start
  m = compiled.memory_analysis()
  memory = Memory(
    arguments=m.argument_size_in_bytes,
    outputs=m.output_size_in_bytes,
    temporaries=m.temp_size_in_bytes,
    aliased=m.alias_size_in_bytes,
    peak=m.argument_size_in_bytes
    + m.output_size_in_bytes
    + m.temp_size_in_bytes
    - m.alias_size_in_bytes,
  )
  return Compiled(resident(memory), seconds)
