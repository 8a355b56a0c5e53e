"""The jitted train step: loss, gradients, AdamW update (of all params, or of LoRA adapters on
a frozen base), with explicit shardings and donation."""

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from holocine_jax import sharding
from holocine_jax.model import lora
from holocine_jax.training import loss as loss_lib
from holocine_jax.training.state import TrainState


def make_train_step(
  model,
  tx,
  schedule,
  fm: loss_lib.FlowMatching,
  *,
  seed: int,
  mesh,
  rules,
  state_shardings,
  batch_shardings,
  base_shardings=None,
  microbatches: int = 1,
):
  """step(state, base, batch) -> (state, metrics); the noise key is fold_in(key(seed), step).
  `base` is {} for a full fine-tune, or a LoRA run's frozen base ({'params': ...}, never
  donated, no gradient) that the adapters in `state.params` are merged into. With
  `microbatches` N > 1 the batch runs as N sequential microbatches (activations of B/N
  examples at a time) whose gradients add up to the whole batch's: one optimizer update."""
  replicated = NamedSharding(mesh, P())

  def step(state: TrainState, base, batch):
    key = jax.random.fold_in(jax.random.key(seed), state.step)
    s_B, noise_BxFxHxWxC = loss_lib.draw(key, batch["latents"].shape, fm)
    count = loss_lib.scored_values(batch)

    def loss_fn(params, part):
      variables = lora.merge(base, params) if base else params
      return loss_lib.squared_error(model.apply, variables, *part) / count

    grad_fn = jax.value_and_grad(loss_fn)
    whole = (batch, s_B, noise_BxFxHxWxC)
    if microbatches == 1:
      loss, grads = grad_fn(state.params, whole)
    else:
      loss, grads = accumulate(grad_fn, state.params, split(whole, microbatches))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(
      loss=loss,
      grad_norm=optax.global_norm(grads),
      learning_rate=schedule(state.step),
      timestep=jnp.mean(1000.0 * s_B),
    )
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  jitted = jax.jit(
    step,
    in_shardings=(state_shardings, base_shardings or {}, batch_shardings),
    out_shardings=(state_shardings, replicated),
    donate_argnums=(0,),
  )

  def run(state, base, batch):
    with sharding.activate(mesh, rules):
      return jitted(state, base, batch)

  run.jitted = jitted
  return run


def split(tree, n: int):
  """Every leaf [B, ...] -> [n, B/n, ...]; microbatch j takes rows j, n + j, 2n + j, ..., so a
  batch sharded in contiguous blocks gives every microbatch rows from every shard (no data
  moves between devices)."""
  return jax.tree.map(lambda x: x.reshape(-1, n, *x.shape[1:]).swapaxes(0, 1), tree)


def accumulate(grad_fn, params, parts):
  """(sum of losses, sum of gradients in fp32) of `grad_fn(params, part)` over the leading axis
  of `parts`, one part at a time (lax.scan)."""
  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

  def body(carry, part):
    loss, grads = grad_fn(params, part)
    total, summed = carry
    summed = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), summed, grads)
    return (total + loss, summed), None

  (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), parts)
  return loss, jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
