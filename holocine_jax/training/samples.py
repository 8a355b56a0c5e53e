"""Samples a few fixed scenes during training, from the in-memory params, into the workdir.

Every `train.sample_every` steps and at the last step, the scenes of `train.sample_scenes` (a
sampling JSONL file, sampling/requests.py; empty with synthetic data: `TOY_SCENES` held-out toy
scenes, evaluation/toy.py) are generated with the config's `sample` and `sampler` blocks into
`workdir/samples/step_<N>/`, one mp4 + JSON sidecar per scene as `holocine_jax.sample` writes
them. Their fingerprint names the workdir and step, as sampling that step's checkpoint would, so
a resumed run skips the scenes a round already wrote. Each new video also goes to TensorBoard as
a contact sheet (`samples/<id>`). The generator is built once and each round passes the current
params: its programs compile once. Every process computes (the params are sharded over all of
them); only process 0 writes. A failed scene (non-finite output) is logged and training goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import ml_collections

from holocine_jax import sample, sharding
from holocine_jax.evaluation import contact_sheet
from holocine_jax.model import lora
from holocine_jax.model.config import DiTConfig
from holocine_jax.sampling import generator, job, requests, video_io
from holocine_jax.training import metrics
from holocine_jax.weights import store

TOY_SCENES = 4  # built-in scenes with synthetic data
# What sampling needs that a training run does not have: a converted checkpoint's umT5 / VAE.
IN_TRAINING = dict(text_encoder="toy", decoder="latent_rgb")


def check_config(config) -> list[str]:
  """Problems (naming the config field) with the in-training sampling settings."""
  t = config.train
  every = t.sample_every
  if isinstance(every, bool) or not isinstance(every, int) or every < 0:
    return [f"train.sample_every must be an integer >= 0 (0: off), got {every!r}"]
  if not every:
    return []
  missing = [block for block in ("sample", "sampler") if block not in config]
  if missing:
    return [f"train.sample_every needs the config blocks {missing} (see configs/tiny.py)"]
  bad = [
    f"sample.{field}={config.sample[field]!r}: sampling during training (train.sample_every) "
    f"takes sample.{field}={value!r} only (no converted checkpoint holds the rest)"
    for field, value in IN_TRAINING.items()
    if config.sample[field] != value
  ]
  if t.sample_scenes and not os.path.isfile(t.sample_scenes):
    bad.append(f"train.sample_scenes {t.sample_scenes!r} is not a file")
  if not t.sample_scenes and config.data.source != "synthetic":
    bad.append(
      "train.sample_scenes must name a sampling JSONL file (built-in toy scenes fit "
      f"data.source='synthetic' only, got {config.data.source!r})"
    )
  return bad


def read_scenes(config) -> list[requests.SceneRequest]:
  """The requests of `train.sample_scenes` (or the toy scenes), with the config's defaults;
  raises ValueError listing the bad lines."""
  path = config.train.sample_scenes
  if path:
    with open(path) as f:
      lines = f.readlines()
  else:
    from holocine_jax.evaluation import toy  # noqa: PLC0415  (synthetic data only)

    lines = [json.dumps(scene) for scene in toy.scenes(TOY_SCENES)]
  items = list(requests.read_lines(lines, sample.defaults(config), sample.limits(config)))
  bad = [str(item) for item in items if isinstance(item, requests.RequestError)]
  if bad:
    raise ValueError(f"train.sample_scenes {path or '(toy scenes)'}: {'; '.join(bad)}")
  return items


class Samples:
  """The sampling rounds of a training run in `workdir`."""

  def __init__(self, config, workdir):
    if "://" in os.fspath(workdir):
      raise ValueError(
        f"train.sample_every writes videos with local file I/O; workdir {workdir} is not local"
      )
    model = DiTConfig.from_config(config.model)
    self.lora = model if model.lora_rank else None  # LoRA: sample the merged params
    if self.lora is not None:
      config = ml_collections.ConfigDict(config.to_dict())
      config.model.update(lora_rank=0, lora_base="bf16")
      self._merge = jax.jit(functools.partial(lora.merge_adapters, config=model))
    self.config = config
    self.workdir = os.path.abspath(workdir)
    self.items = read_scenes(config)
    mesh = sharding.make_mesh(config.mesh)
    self.batch_size = sharding.batch_shards(mesh, sharding.logical_rules(config.logical_rules))
    self.generator: generator.Generator | None = None

  def due(self, step: int) -> bool:
    t = self.config.train
    return step % t.sample_every == 0 or step == t.num_steps

  def _generate(self, params) -> generator.Generator:
    """The generator with `params`: built once, then only its params change (no recompile)."""
    if self.generator is None:
      self.generator = sample.build(self.config, params=params)
    else:
      self.generator = dataclasses.replace(self.generator, params_high=params)
    return self.generator

  def out_dir(self, step: int) -> str:
    return os.path.join(self.workdir, "samples", f"step_{step}")

  def __call__(self, step: int, params, writer: metrics.MetricWriter, base=None) -> job.JobReport:
    """Samples every scene at `step` with `params` ({'params': ...}; a LoRA run's adapters,
    merged into its frozen `base`) into `out_dir(step)`, logging through `writer`."""
    start = time.perf_counter()
    if self.lora is not None:
      params = {"params": self._merge(base["params"], params["params"])}
    out = self.out_dir(step)
    expert = self.config.train.expert
    experts = (store.EXPERTS if expert == "all" else (expert,),)
    model = DiTConfig.from_config(self.config.model)
    # as its checkpoint
    weights = store.Source(self.workdir, "training", model, step, experts, self.lora)
    report = job.run(
      self.items,
      lambda: self._generate(params),
      out,
      setup=sample.setup(self.config, weights),
      batch_size=self.batch_size,
      fps=self.config.sample.fps,
      metadata=dict(step=step),
      log=writer.log,
      progress=False,
    )
    if jax.process_index() == 0:
      for request in (r for r in self.items if r.id in report.done):
        frames, _ = video_io.read_mp4(job.output_paths(out, request.id)[0])
        scene = request.scene
        sheet = contact_sheet.draw(
          frames, f"{request.id} at step {step}", scene.shot_captions, scene.cut_frames, []
        )
        writer.image(f"samples/{request.id}", sheet, step)
    seconds = time.perf_counter() - start
    writer.scalars(step, dict(seconds=seconds, failed=len(report.failed)), "samples")
    writer.log(
      f"samples at step {step}: {len(report.done)} new, {len(report.skipped)} already there, "
      f"{len(report.failed)} failed in {seconds:.1f}s -> {out}"
    )
    return report
