"""Plans a job on a TPU slice: chooses the mesh, compiles at full depth, reports fit per chip.

Without a pinned mesh, candidate (data, fsdp, context, tensor) splits that the job's shapes
allow are tried in order of expected throughput (fewest context x tensor splits, context before
tensor, FSDP before data parallelism). Each is compiled at two reduced depths and its peak per
chip extrapolated linearly to the full depth; the first predicted to fit is confirmed at full
depth (on failure the search goes on). When none is predicted to fit, the smallest predicted
peak is compiled at full depth and reported as not fitting. With `search_layers=0` candidates
are compiled at full depth directly (with scanned layers compile time hardly depends on depth).

`largest_batch` finds the largest batch of an encoder job that fits each chip (how many clips
preprocessing encodes per call), each probe a full-depth `plan` on a fixed mesh.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os

from holocine_jax import sharding, topology
from holocine_jax.planning import memory, programs

DEFAULT_FIT = 0.8  # fits: peak per chip <= this fraction of the chip's usable HBM
MAX_BATCH_PER_SHARD = 4096  # the batch search stops doubling here


class PlanError(ValueError):
  """An unknown topology, or a mesh that does not divide the slice."""


@dataclasses.dataclass
class Plan:
  """What `plan` found; `to_json` is the CLI's --json object."""

  job: str
  topology: str
  chips: int
  hbm_bytes: int
  fit_limit: float
  mesh: dict
  compiled: bool = False
  fits: bool = False
  per_device_bytes: memory.Memory = memory.Memory()
  num_layers: int | None = None
  compile_s: float = 0.0
  facts: dict = dataclasses.field(default_factory=dict)
  search: list = dataclasses.field(default_factory=list)
  probes: list = dataclasses.field(default_factory=list)  # largest_batch's compiles
  error: str = ""

  @property
  def fraction(self) -> float:
    return self.per_device_bytes.peak / self.hbm_bytes

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out.update(out.pop("facts"), fraction=self.fraction)
    return out


def candidates(config, request: programs.Request, num_chips: int) -> list[dict]:
  """Mesh sizes over `num_chips` that the job's batch, heads and tokens divide, best first."""
  model = config.model
  tokens = programs.token_count(config, request)
  out = []
  for data, fsdp, context in itertools.product(_divisors(num_chips), repeat=3):
    tensor, rest = divmod(num_chips, data * fsdp * context)
    if rest or data * fsdp * context * tensor != num_chips:
      continue
    shards = data * fsdp
    rows = programs.rows(config, request, shards)
    if rows != programs.rows(config, request, 1) or rows % shards:
      continue  # the job would pad its batch: not the batch asked for
    if request.job in ("sample", "train"):
      if model.num_heads % (tensor * context) or tokens % context:
        continue
    elif context > 1:
      continue  # only the DiT splits a sequence
    out.append(dict(data=data, fsdp=fsdp, context=context, tensor=tensor))
  out.sort(key=lambda m: (m["context"] * m["tensor"], m["tensor"], m["data"]))
  return out


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def _deviceless_libtpu(topology_name: str) -> None:
  """libtpu settings for compiling without TPUs: no runtime lookups (and their warnings) and no
  lock against other processes doing the same."""
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology_name)


def _measurer(config, request, devices):
  """measure(sizes, num_layers=None) -> (memory.Compiled, Program), each compiled once."""
  cache = {}

  def measure(sizes, num_layers=None):
    key = (tuple(sizes.values()), num_layers)
    if key not in cache:
      try:
        mesh = sharding.make_mesh(sizes, devices=devices)
      except NotImplementedError as e:  # jax finds no layout of the axes on the torus
        reason = str(e).split(". ")[0]
        raise PlanError(f"mesh {sizes} does not map onto the slice's chip grid: {reason}") from None
      program = programs.build(config, request, mesh, num_layers)
      cache[key] = memory.compile_program(program, mesh, config.logical_rules), program
    return cache[key]

  return measure


def plan(
  config,
  request: programs.Request,
  topology_name: str,
  *,
  mesh: dict | None = None,
  fit: float = DEFAULT_FIT,
  search_layers: int = 2,
  max_candidates: int = 8,
  log=lambda message: None,
) -> Plan:
  """Compiles the job for the slice; `mesh` pins the axis sizes (else searched, see above)."""
  tpu, shape = _slice(topology_name, mesh)
  _deviceless_libtpu(topology_name)
  devices = topology.devices(topology_name)
  result = Plan(request.job, topology_name, tpu.num_chips, tpu.hbm_bytes, fit, {})
  limit = fit * tpu.hbm_bytes
  measure = _measurer(config, request, devices)
  if shape is not None:
    meshes = [dict(zip(sharding.MESH_AXES, shape, strict=True))]
  else:
    meshes = _search(
      config, request, measure, len(devices), limit, search_layers, max_candidates, result, log
    )
  for sizes in meshes:
    log(f"compiling {request.job} on {topology_name}, mesh {sizes}, at full depth")
    compiled, program = measure(sizes)
    result.mesh = sizes
    result.compiled = not compiled.out_of_memory
    result.per_device_bytes = compiled.memory
    result.fits = result.compiled and compiled.memory.peak <= limit
    result.num_layers, result.compile_s = program.num_layers, round(compiled.compile_s, 1)
    result.facts = program.facts
    result.error = compiled.out_of_memory.strip().splitlines()[0] if compiled.out_of_memory else ""
    verdict = "fits" if result.fits else "does not fit"
    log(f"  peak {compiled.memory.peak / 2**30:.1f} GiB per chip: {verdict}")
    if result.fits:
      break
  return result


def _slice(topology_name: str, mesh: dict | None):
  """(the parsed slice, the pinned mesh's axis sizes or None); PlanErrors name the problem."""
  try:
    tpu = topology.parse(topology_name)
  except ValueError as e:
    raise PlanError(str(e)) from None
  try:
    return tpu, None if mesh is None else sharding.mesh_shape(mesh, tpu.num_chips)
  except ValueError as e:
    raise PlanError(f"{topology_name} has {tpu.num_chips} chips: {e}") from None


def encoder_mesh(topology_name: str, mesh: dict | None = None) -> dict:
  """The axis sizes preprocessing runs its encoders on: `mesh` (only data and fsdp may split)
  or every chip on data."""
  _, shape = _slice(topology_name, mesh or dict(data=-1))
  sizes = dict(zip(sharding.MESH_AXES, shape, strict=True))
  if sizes["context"] * sizes["tensor"] != 1:
    raise PlanError(f"the encoders split only data and fsdp: mesh {sizes} has context or tensor")
  return sizes


def largest_batch(
  config,
  request: programs.Request,
  topology_name: str,
  *,
  mesh: dict | None = None,
  fit: float = DEFAULT_FIT,
  log=lambda message: None,
) -> Plan:
  """The plan at the largest batch of an encoder job (vae, text) that fits each chip.

  Batches are whole batch shards of `mesh` (default: every chip on `data`, as preprocessing
  splits its clips): 1, 2, 4, ... per shard until a compile does not fit, then bisection between
  the last fitting and the first misfit. The result (at one row per shard when even that does
  not fit) lists every compile in `probes` and the smallest misfit in facts next_batch/next_peak.
  """
  if request.job not in programs.ENCODER_JOBS:
    raise PlanError(f"the batch search plans {programs.ENCODER_JOBS}, not job {request.job!r}")
  sizes = encoder_mesh(topology_name, mesh)
  shards = math.prod(sizes[a] for a in sharding.batch_axes(config.logical_rules))
  plans = {}

  def fits(per_shard: int) -> bool:
    batch = per_shard * shards
    log(f"probing batch {batch} ({per_shard} per batch shard)")
    plans[per_shard] = plan(
      config, dataclasses.replace(request, batch=batch), topology_name, mesh=sizes, fit=fit, log=log
    )
    return plans[per_shard].fits

  lo, hi = 0, 1
  while hi <= MAX_BATCH_PER_SHARD and fits(hi):
    lo, hi = hi, 2 * hi
  if lo and hi <= MAX_BATCH_PER_SHARD:
    while hi - lo > 1:
      mid = (lo + hi) // 2
      lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  result = plans[lo or 1]
  result.probes = [
    dict(batch=k * shards, peak=p.per_device_bytes.peak, fits=p.fits, compile_s=p.compile_s)
    for k, p in sorted(plans.items())
  ]
  if hi in plans and lo:
    result.facts.update(next_batch=hi * shards, next_peak=plans[hi].per_device_bytes.peak)
  return result


def _search(config, request, measure, num_chips, limit, search_layers, max_candidates, result, log):
  """Meshes to compile at full depth, lazily: each candidate predicted to fit, in order, then
  (if none was) the smallest predicted peak. Sets result.error when nothing compiles. Once a
  (context, tensor) split is predicted not to fit, its splits with more data parallelism (which
  replicate more) are skipped; at most `max_candidates` meshes are compiled."""
  options = candidates(config, request, num_chips)
  if not options:
    result.error = f"no mesh of {num_chips} chips divides the job's batch, heads and tokens"
  if len(options) <= 1:
    yield from options
    return
  full = programs.full_depth(config, request)
  depths = (search_layers, 2 * search_layers) if full and 0 < 2 * search_layers < full else None
  best, yielded, too_big = None, False, set()
  for sizes in options:
    split = (sizes["context"], sizes["tensor"])
    if split in too_big:
      continue
    if len(result.search) == max_candidates:
      break
    log(f"trying mesh {sizes}" + (f" at depths {depths}" if depths else ""))
    try:
      runs = [measure(sizes, d)[0] for d in depths or (None,)]
      predicted = runs[-1].memory.peak
      if depths:  # never below a measured depth (an out-of-memory estimate can shrink)
        a, b = (run.memory.peak for run in runs)
        predicted = max(a, b, b + (b - a) / (depths[1] - depths[0]) * (full - depths[1]))
    except PlanError as e:  # a mesh the slice's torus cannot hold: not a compile
      log(f"  skipped: {e}".splitlines()[0])
      continue
    except Exception as e:  # noqa: BLE001 (a candidate the compiler rejects is skipped)
      result.search.append(dict(mesh=sizes, error=f"{type(e).__name__}: {e}".splitlines()[0]))
      log(f"  skipped: {result.search[-1]['error']}")
      continue
    seconds = round(sum(run.compile_s for run in runs), 1)
    result.search.append(dict(mesh=sizes, predicted_peak=int(predicted), compile_s=seconds))
    log(f"  predicted peak {predicted / 2**30:.1f} GiB per chip (limit {limit / 2**30:.1f})")
    if best is None or predicted < best[0]:
      best = (predicted, sizes)
    if predicted <= limit:
      yielded = True
      yield sizes  # plan() compiles it at full depth; resumed only when that did not fit
    if not result.fits:
      too_big.add(split)
  if best is None:
    result.error = "no candidate mesh compiled: " + "; ".join(
      f"{s['mesh']}: {s['error']}" for s in result.search
    )
  elif not yielded:
    yield best[1]
