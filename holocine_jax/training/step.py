"""The jitted train step: loss, gradients, AdamW update (of all params, or of LoRA adapters on
a frozen base), with explicit shardings and donation."""

import jax
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
):
  """step(state, base, batch) -> (state, metrics); the noise key is fold_in(key(seed), step).
  `base` is {} for a full fine-tune, or a LoRA run's frozen base ({'params': ...}, never
  donated, no gradient) that the adapters in `state.params` are merged into."""
  replicated = NamedSharding(mesh, P())

  def step(state: TrainState, base, batch):
    key = jax.random.fold_in(jax.random.key(seed), state.step)

    def loss_fn(params):
      variables = lora.merge(base, params) if base else params
      return loss_lib.flow_matching_loss(model.apply, variables, batch, key, fm)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(
      loss=loss,
      grad_norm=optax.global_norm(grads),
      learning_rate=schedule(state.step),
      **aux,
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
