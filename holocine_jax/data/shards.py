"""Resumable shards of a preprocessing job, split between hosts.

The manifest's non-blank lines are cut into shards of `shard_size` consecutive lines; host h of
H writes shards h, h + H, h + 2H, ... (disjoint slices, any H, no coordination). A shard is
written as one ArrayRecord file (`dataset.write_shard`: a temp name renamed when complete), then
its done-record `preprocess/<split>/shard-0000k.json` (atomic): the manifest lines it covers (number
and digest of the text), the lines it holds in record order, the skipped lines with their reasons,
cut warnings, and its stats. A rerun skips shards that have a done-record and writes the others
from scratch, so a killed job leaves neither duplicates nor gaps. Every done-record carries the
job's settings: a rerun with other settings, or over a changed manifest line, is an error naming
what changed. Whichever host finds every shard of the split done writes the tfds dataset info
(`dataset.write_info`) and the job's summary; until then the dataset does not exist for readers.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import os

from holocine_jax import files
from holocine_jax.data.manifest import Line
from holocine_jax.training import dataset

RECORDS = "preprocess"


@dataclasses.dataclass(frozen=True)
class Shard:
  index: int
  num_shards: int
  lines: tuple[Line, ...]


def plan(lines: list[Line], shard_size: int) -> list[Shard]:
  """Consecutive groups of `shard_size` lines (at least one shard, possibly empty)."""
  if shard_size < 1:
    raise ValueError(f"shard_size must be >= 1, got {shard_size}")
  n = max(1, -(-len(lines) // shard_size))
  return [Shard(k, n, tuple(lines[k * shard_size : (k + 1) * shard_size])) for k in range(n)]


def for_host(shards: list[Shard], host: int, num_hosts: int) -> list[Shard]:
  """The shards host `host` of `num_hosts` writes: every num_hosts-th, from its index."""
  if not 0 <= host < num_hosts:
    raise ValueError(f"host must be in [0, {num_hosts}), got {host}")
  return shards[host::num_hosts]


def summarize(records: list[dict]) -> dict:
  """Counts over done-records: lines, written, skipped per reason, kept with cut warnings."""
  reasons = collections.Counter(s["reason"] for r in records for s in r["skipped"])
  return dict(
    shards=len(records),
    lines=sum(len(r["covers"]) for r in records),
    written=sum(len(r["lines"]) for r in records),
    skipped=dict(sorted(reasons.items())),
    cut_warnings=sum(len(r["warnings"]) for r in records),
  )


def _record_path(records_dir: str, index: int) -> str:
  return os.path.join(records_dir, f"shard-{index:05d}.json")


def _read(records_dir: str, index: int) -> dict | None:
  try:
    with open(_record_path(records_dir, index)) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


class Store:
  """The shards and done-records of one split under a tfds `data_dir`, for one job's settings."""

  def __init__(self, data_dir, split: str, settings: dict):
    self.version_dir = dataset.output_dir(data_dir)
    self.split, self.settings = split, json.loads(json.dumps(settings))
    self.records_dir = os.path.join(self.version_dir, RECORDS, split)

  def _record_path(self, index: int) -> str:
    return _record_path(self.records_dir, index)

  def _read(self, index: int) -> dict | None:
    return _read(self.records_dir, index)

  def _check(self, record: dict, shard: Shard) -> None:
    path = self._record_path(shard.index)
    changed = sorted(
      k
      for k in {*record["settings"], *self.settings}
      if record["settings"].get(k) != self.settings.get(k)
    )
    if changed:
      diff = ", ".join(
        f"{k}: {record['settings'].get(k)!r} -> {self.settings.get(k)!r}" for k in changed
      )
      raise ValueError(f"{path} was written with other settings ({diff}); use another --out")
    covers = [[line.number, line.digest] for line in shard.lines]
    if record["num_shards"] != shard.num_shards or record["covers"] != covers:
      raise ValueError(
        f"{path} covers manifest lines {[n for n, _ in record['covers']]} of {record['num_shards']}"
        f" shards, but the manifest now gives {[n for n, _ in covers]} of {shard.num_shards}: "
        "the manifest changed since; use another --out"
      )

  def done(self, shard: Shard) -> dict | None:
    """The shard's done-record if it is finished (checked against this job), else None."""
    record = self._read(shard.index)
    if record is not None:
      self._check(record, shard)
    return record

  def write(
    self,
    shard: Shard,
    records: list[tuple[int, dict]],
    skipped: list[dict],
    warnings: list[dict],
  ) -> dict:
    """Writes the shard's (line, record) pairs, then its done-record; returns the latter."""
    path = dataset.shard_path(self.version_dir, self.split, shard.index, shard.num_shards)
    for stale in glob.glob(os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.*")):
      os.remove(stale)  # a temp file of a killed attempt at this shard
    stats = dataset.write_shard(
      path,
      (r for _, r in records),
      self.settings["latent_channels"],
      self.settings["text_dim"],
    )
    record = dict(
      shard=shard.index,
      num_shards=shard.num_shards,
      settings=self.settings,
      covers=[[line.number, line.digest] for line in shard.lines],
      lines=[n for n, _ in records],
      skipped=skipped,
      warnings=warnings,
      **stats,
    )
    files.write_json(self._record_path(shard.index), record)
    return record

  def finalize(self, shards: list[Shard]) -> dict | None:
    """If every shard of the split is done: writes its `summary.json` and the dataset info (of
    every split with a summary); returns the split's summary, else None."""
    records = [self._read(s.index) for s in shards]
    if any(r is None for r in records):
      return None
    for record, shard in zip(records, shards, strict=True):
      self._check(record, shard)
    summary = summarize(records)
    files.write_json(os.path.join(self.records_dir, "summary.json"), summary)
    splits = {}
    for path in sorted(glob.glob(os.path.join(self.version_dir, RECORDS, "*", "summary.json"))):
      with open(path) as f:
        num_shards = json.load(f)["shards"]
      folder = os.path.dirname(path)
      splits[os.path.basename(folder)] = [_read(folder, k) for k in range(num_shards)]
    dataset.write_info(
      self.version_dir,
      splits,
      latent_channels=self.settings["latent_channels"],
      text_dim=self.settings["text_dim"],
    )
    return summary
