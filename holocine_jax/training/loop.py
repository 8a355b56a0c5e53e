"""The training loop: mesh, model, data, state (fresh or restored), steps, metrics, checkpoints.

Metrics of step k are fetched after step k+1 is dispatched, so the host never stalls the
device; a non-finite loss stops training with the step that produced it. Checkpoints are saved
every `checkpoint_every` steps, at the end, and at a preemption notice (jax's preemption sync
point, or SIGTERM on any process: with several processes the flag is all-gathered every step);
the result then says `preempted`. With `sample_every`, a few scenes are sampled from the current
params between steps (samples.py). Nonsensical `train` settings are refused before anything runs.
A new run starts from `train.init_from` (init_from.py) or a random init; with LoRA
(model.lora_rank > 0) the trained state holds the adapters only and the loop holds the frozen
base it rebuilds from init_from (never checkpointed), passing it to every step.
"""

import dataclasses
import math
import os
from collections.abc import Callable

import jax
import numpy as np

from holocine_jax import sharding
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT
from holocine_jax.training import (
  checkpoint,
  global_batch,
  init_from,
  pipeline,
  samples,
  state,
  synthetic,
)
from holocine_jax.training import loss as loss_lib
from holocine_jax.training import metrics as metrics_lib
from holocine_jax.training import step as step_lib


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss."""


@dataclasses.dataclass
class TrainResult:
  state: state.TrainState
  losses: dict[int, float]  # 1-based step -> loss, for the steps this run computed
  start_step: int
  preempted: bool = False  # stopped early (and saved) at a preemption notice


def check_config(config) -> None:
  """Raises ValueError naming every `train` setting that cannot run."""
  t = config.train
  bad = [
    f"train.{key} must be an integer >= 1, got {t[key]!r}"
    for key in ("num_steps", "global_batch", "log_every", "checkpoint_every", "keep_checkpoints")
    if isinstance(t[key], bool) or not isinstance(t[key], int) or t[key] < 1
  ]
  if isinstance(t.warmup_steps, bool) or not isinstance(t.warmup_steps, int) or t.warmup_steps < 0:
    bad.append(f"train.warmup_steps must be an integer >= 0, got {t.warmup_steps!r}")
  lr = t.learning_rate
  if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and 0 <= lr < math.inf):
    bad.append(f"train.learning_rate must be a finite number >= 0 (0: frozen), got {lr!r}")
  micro = t.get("microbatches", 1)
  if isinstance(micro, bool) or not isinstance(micro, int) or micro < 1:
    bad.append(f"train.microbatches must be an integer >= 1, got {micro!r}")
  elif isinstance(t.global_batch, int) and t.global_batch % micro:
    bad.append(
      f"train.global_batch {t.global_batch} is not a multiple of train.microbatches {micro}"
    )
  bad += init_from.check_config(t)
  bad += samples.check_config(config)
  if bad:
    raise ValueError("; ".join(bad))


def check_microbatches(train, batch_shards: int) -> None:
  """Every microbatch (global_batch / microbatches examples) must split over the batch shards."""
  micro = train.get("microbatches", 1)
  if (train.global_batch // micro) % batch_shards:
    raise ValueError(
      f"a microbatch of train.global_batch / train.microbatches = {train.global_batch // micro} "
      f"examples does not split over the mesh's {batch_shards} batch shards (data x fsdp); "
      "use fewer train.microbatches, a larger batch, or split the sequence (mesh.context)"
    )


def open_source(config):
  """(random-access source, per-sample latent shapes) named by `config.data.source`."""
  data = config.data
  if data.source == "synthetic":
    source = synthetic.SyntheticSource.from_config(data, config.model)
    return source, [source.latent_shape(i) for i in range(len(source))]
  if data.source == "tfds":
    from holocine_jax.training import dataset

    return dataset.open_source(data.data_dir, data.split)
  raise ValueError(f"data.source must be 'synthetic' or 'tfds', got {data.source!r}")


def train(config, workdir, *, on_step: Callable | None = None) -> TrainResult:
  """Trains `config.train.num_steps` steps in `workdir`, resuming from its newest checkpoint.

  `on_step(step, state, metrics)` runs after every step (and its checkpoint save, if any).
  """
  check_config(config)
  train_cfg = config.train
  mesh = sharding.make_mesh(config.mesh)
  rules = config.logical_rules
  check_microbatches(train_cfg, sharding.batch_shards(mesh, rules))
  model = WanDiT(DiTConfig.from_config(config.model))
  init = init_from.resolve(config, workdir, model.config)  # refused before anything is written
  tx, schedule = state.optimizer(train_cfg)
  fm = loss_lib.FlowMatching.from_config(train_cfg)
  sampler = samples.Samples(config, workdir) if train_cfg.sample_every else None

  source, shapes = open_source(config)
  rows = global_batch.host_rows(mesh, rules, train_cfg.global_batch)
  iterator = iter(pipeline.from_config(source, shapes, config, rows))
  key = jax.random.key(train_cfg.seed)
  abstract_state, state_shardings = state.abstract(model, tx, mesh, rules, key)
  base, base_shardings, base_fingerprint = {}, {}, ""  # a LoRA run's frozen base
  if model.config.lora_rank:
    base, base_shardings, base_fingerprint = init_from.lora_base(
      init, model.config, mesh, rules, workdir
    )

  ckpt = checkpoint.Checkpointer(
    os.path.join(os.fspath(workdir), "checkpoints"),
    keep=train_cfg.keep_checkpoints,
    async_save=train_cfg.async_checkpoint,
  )
  train_state = ckpt.restore_latest(abstract_state, state_shardings, iterator)
  if train_state is None:
    train_state = init_from.start(
      init, model, tx, mesh, rules, key, state_shardings, workdir, base_fingerprint
    )
  start = int(jax.device_get(train_state.step))

  writer = metrics_lib.MetricWriter(
    workdir,
    start_step=start,
    total_steps=train_cfg.num_steps,
    tensorboard=train_cfg.tensorboard,
    progress_bar=train_cfg.progress_bar,
  )
  losses: dict[int, float] = {}
  step_fns = {}  # one jitted step per batch structure (shot bound): one compile per bucket
  pending = None
  preempted = False

  def report(done: int, device_metrics):
    values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not math.isfinite(values["loss"]):
      raise NonFiniteLossError(
        f"loss is {values['loss']} at step {done} (grad_norm={values['grad_norm']}); stopping. "
        f"The newest checkpoint is step {ckpt.latest_step()}."
      )
    losses[done] = values["loss"]
    writer.step(values)
    if done % train_cfg.log_every == 0 or done == train_cfg.num_steps:
      writer.write(done, values)

  try:
    with checkpoint.SigtermFlag() as sigterm:
      for done in range(start + 1, train_cfg.num_steps + 1):
        host_batch = next(iterator)
        batch_shardings = global_batch.shardings(host_batch, mesh, rules)
        bucket = jax.tree.structure(batch_shardings)  # carries the bucket's static shot bound
        if bucket not in step_fns:
          step_fns[bucket] = step_lib.make_train_step(
            model,
            tx,
            schedule,
            fm,
            seed=train_cfg.seed,
            mesh=mesh,
            rules=rules,
            state_shardings=state_shardings,
            batch_shardings=batch_shardings,
            base_shardings=base_shardings,
            microbatches=train_cfg.get("microbatches", 1),
          )
        batch = global_batch.to_global(host_batch, batch_shardings, train_cfg.global_batch, rows)
        train_state, device_metrics = step_fns[bucket](train_state, base, batch)
        if pending is not None:
          report(*pending)
        pending = (done, device_metrics)
        last = done == train_cfg.num_steps  # a notice at the last step is a completed run
        preempted = not last and (ckpt.reached_preemption(done) or _any_process(sigterm.raised))
        if last or preempted or done % train_cfg.checkpoint_every == 0:
          report(*pending)
          pending = None
          ckpt.save(done, train_state, iterator)
        if sampler is not None and not preempted and sampler.due(done):
          sampler(done, train_state.params, writer, base)
        if on_step is not None:
          on_step(done, train_state, device_metrics)
        if preempted:
          print(f"preemption notice: saved step {done}, stopping", flush=True)
          break
  finally:
    writer.close()
    ckpt.close()
  return TrainResult(train_state, losses, start, preempted)


def _any_process(flag: bool) -> bool:
  """True if `flag` is set on any process (a collective when there are several)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
