"""Train state (step, fp32 master params, optimizer state), the optimizer, sharded creation."""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from holocine_jax import sharding
from holocine_jax.model import dit


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def learning_rate(train) -> optax.Schedule:
  """Linear warmup to the peak, then constant or cosine decay to end_lr_ratio * peak."""
  peak, warmup = train.learning_rate, train.warmup_steps
  if train.decay == "constant":
    after = optax.constant_schedule(peak)
  elif train.decay == "cosine":
    after = optax.cosine_decay_schedule(
      peak, max(train.num_steps - warmup, 1), alpha=train.end_lr_ratio
    )
  else:
    raise ValueError(f"train.decay must be 'constant' or 'cosine', got {train.decay!r}")
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def optimizer(train) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with global-norm clipping (on the fp32 master params)."""
  schedule = learning_rate(train)
  tx = optax.chain(
    optax.clip_by_global_norm(train.clip_norm),
    optax.adamw(schedule, b1=train.b1, b2=train.b2, eps=train.eps, weight_decay=train.weight_decay),
  )
  return tx, schedule


def init_fn(model, tx):
  """key -> TrainState of boxed arrays (the optimizer state inherits the params' logical names);
  its params are the DiT's variables, {'params': ...}, as `model.apply` takes them."""
  init_params = dit.init_fn(model.config)

  def init(key):
    params = {"params": init_params(key)}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  return init


def create(model, tx, mesh, rules, key):
  """(state, state shardings): params and optimizer state initialised directly sharded."""
  return sharding.init_sharded(init_fn(model, tx), mesh, rules, key)
