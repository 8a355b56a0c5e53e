"""TPU slices by the names users rent them under (`v5p-8`, `v5e-16`, ...), as deviceless devices.

`devices(name)` gives the TPU devices of a slice from libtpu's topology description, without any
TPU attached: a Mesh over them lets `jax.jit(...).lower(...).compile()` run the real TPU compiler
and report per-chip memory from a CPU host. Nothing here may run an op on those devices.
"""

import dataclasses
import math
import os
import re

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Generation:
  """A TPU generation: how its slice names count, its chip layout and usable HBM per chip."""

  name: str
  cores_per_chip: int  # slice names count TensorCores on v4 / v5p (megacore), chips otherwise
  dims: int  # 3D torus (v4, v5p) or 2D (v5e, v6e)
  chip_config: str
  hbm_bytes: int  # what the compiler may use per chip (its RESOURCE_EXHAUSTED limit)


# Usable HBM as libtpu 0.0.42 reports it ("exceeds available HBM (95.74G)").
GENERATIONS = {
  "v4": Generation("v4", 2, 3, "megacore", int(30.75 * GiB)),
  "v5p": Generation("v5p", 2, 3, "megacore", int(95.74 * GiB)),
  "v5e": Generation("v5e", 1, 2, "default", int(15.75 * GiB)),
  "v6e": Generation("v6e", 1, 2, "default", int(31.25 * GiB)),
}
_ALIASES = {"v5litepod": "v5e"}

# Chip grids of the standard slice shapes (chips -> torus bounds).
_GRIDS_3D = {
  1: (1, 1, 1),
  4: (2, 2, 1),
  8: (2, 2, 2),
  16: (2, 2, 4),
  32: (2, 4, 4),
  64: (4, 4, 4),
  128: (4, 4, 8),
  256: (4, 8, 8),
  512: (8, 8, 8),
  1024: (8, 8, 16),
  2048: (8, 16, 16),
  4096: (16, 16, 16),
}
_GRIDS_2D = {
  1: (1, 1),
  4: (2, 2),
  8: (2, 4),
  16: (4, 4),
  32: (4, 8),
  64: (8, 8),
  128: (8, 16),
  256: (16, 16),
}


@dataclasses.dataclass(frozen=True)
class Slice:
  """One TPU slice: `v5p-64` is 32 v5p chips on a 2x4x4 torus."""

  name: str
  generation: Generation
  grid: tuple[int, ...]

  @property
  def num_chips(self) -> int:
    return math.prod(self.grid)

  @property
  def hbm_bytes(self) -> int:
    return self.generation.hbm_bytes

  @property
  def topology_name(self) -> str:
    return f"{self.generation.name}:{'x'.join(map(str, self.grid))}"


def _known() -> str:
  names = []
  for gen in GENERATIONS.values():
    grids = _GRIDS_3D if gen.dims == 3 else _GRIDS_2D
    names.append(f"{gen.name}-{{{','.join(str(n * gen.cores_per_chip) for n in grids)}}}")
  return "; ".join(names) + " (or generation:grid, e.g. v5p:2x2x1)"


def parse(name: str) -> Slice:
  """`v5p-8` / `v5litepod-16` / `v6e-8` / `v4-32`, or an explicit `v5p:2x4x4` grid."""
  m = re.fullmatch(r"(v\w+?)(?:-(\d+)|:(\d+(?:x\d+)+))", name.strip().lower())
  gen = GENERATIONS.get(_ALIASES.get(m.group(1), m.group(1))) if m else None
  if gen is None:
    raise ValueError(f"unknown TPU topology {name!r}; known: {_known()}")
  grids = _GRIDS_3D if gen.dims == 3 else _GRIDS_2D
  if m.group(3):
    grid = tuple(int(x) for x in m.group(3).split("x"))
    if len(grid) != gen.dims or min(grid) < 1:
      raise ValueError(f"topology {name!r}: {gen.name} grids have {gen.dims} dimensions")
  else:
    count = int(m.group(2))
    chips, rest = divmod(count, gen.cores_per_chip)
    if rest or chips not in grids:
      raise ValueError(f"unknown TPU topology {name!r}; known: {_known()}")
    grid = grids[chips]
  return Slice(name, gen, grid)


def devices(name: str) -> list:
  """The slice's TPU devices (deviceless: for lowering and compiling only)."""
  from jax.experimental import topologies

  # Deviceless: no chip is opened, so processes compiling side by side (pytest -n, a planner
  # beside a job) need not hold libtpu's single-process lock.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  s = parse(name)
  # Hosts hold up to 2x2x1 chips (v5e / v6e single-host slices hold all of theirs).
  host = (min(s.grid[0], 2), min(s.grid[1], 2), 1)
  if s.generation.dims == 2 and s.num_chips <= 8:
    host = s.grid + (1,)
  topo = topologies.get_topology_desc(
    topology_name=s.topology_name,
    platform="tpu",
    chip_config_name=s.generation.chip_config,
    chips_per_host_bounds=host,
    num_slices=1,
  )
  return list(topo.devices)
