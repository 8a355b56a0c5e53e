"""Training metrics: TensorBoard event files and the console (progress bar + log lines).

Only process 0 writes; every process may call the methods.
"""

import os
import sys

import jax
import tqdm


class MetricWriter:
  """Scalars to TensorBoard (`workdir/tensorboard`) and console; a progress bar over steps."""

  def __init__(self, workdir, *, start_step, total_steps, tensorboard=True, progress_bar=True):
    self.active = jax.process_index() == 0
    self.tb = None
    if self.active and tensorboard:
      from tensorboardX import SummaryWriter

      self.tb = SummaryWriter(os.path.join(os.fspath(workdir), "tensorboard"))
    self.bar = tqdm.tqdm(
      total=total_steps,
      initial=start_step,
      disable=not (self.active and progress_bar),
      file=sys.stderr,
      dynamic_ncols=True,
      mininterval=1.0,
    )

  def step(self, metrics: dict[str, float]):
    """Advances the progress bar by one step, showing the latest loss."""
    self.bar.update(1)
    self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)

  def write(self, step: int, metrics: dict[str, float]):
    if not self.active:
      return
    if self.tb is not None:
      for name, value in metrics.items():
        self.tb.add_scalar(f"train/{name}", value, step)
      self.tb.flush()
    line = " ".join(f"{k}={v:.5g}" for k, v in metrics.items())
    message = f"step {step}: {line}"
    if self.bar.disable:
      print(message, flush=True)
    else:
      self.bar.write(message)

  def close(self):
    self.bar.close()
    if self.tb is not None:
      self.tb.close()
