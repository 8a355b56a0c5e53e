"""Train state (step, fp32 master params or LoRA adapters, optimizer state), the optimizer,
sharded creation."""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.core import meta

from holocine_jax import sharding
from holocine_jax.model import dit, lora


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
  its params are the DiT's variables, {'params': ...}, as `model.apply` takes them, or with LoRA
  (model.config.lora_rank > 0) the adapters only, {'params': adapters}: the frozen base is not
  trained state (`base_abstract`)."""
  init_params = dit.init_fn(model.config)

  def init(key):
    params = {"params": init_params(key)}
    if model.config.lora_rank:
      params = lora.split(params)[1]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  return init


def create(model, tx, mesh, rules, key):
  """(state, state shardings): params and optimizer state initialised directly sharded."""
  return sharding.init_sharded(init_fn(model, tx), mesh, rules, key)


def abstract(model, tx, mesh, rules, key):
  """(ShapeDtypeStruct state, state shardings) of `create`'s result; allocates nothing."""
  with sharding.activate(mesh, rules):
    boxed = jax.eval_shape(init_fn(model, tx), key)
  return meta.unbox(boxed), meta.unbox(sharding.shardings_for(boxed, mesh, rules))


def base_abstract(model, mesh, rules):
  """(ShapeDtypeStruct {'params': frozen base}, its shardings) of a LoRA model, as the train
  step takes it; ({}, {}) without LoRA. Allocates nothing."""
  if not model.config.lora_rank:
    return {}, {}
  init = dit.init_fn(model.config)
  boxed = {"params": jax.eval_shape(lambda: init(jax.random.key(0)))}  # no eager op
  base = lora.split(boxed)[0]
  return meta.unbox(base), meta.unbox(sharding.shardings_for(base, mesh, rules))


def from_params(params, tx, shardings) -> TrainState:
  """A fresh state (step 0, new optimizer state) around `params` (donated), in `shardings`."""

  def init(params):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  return jax.jit(init, out_shardings=shardings, donate_argnums=(0,))(params)
