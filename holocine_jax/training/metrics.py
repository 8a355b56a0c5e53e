"""Training metrics: TensorBoard event files (scalars, sample images) and the console (progress
bar + log lines).

Only process 0 writes; every process may call the methods.
"""

import os
import sys

import jax
import numpy as np
import tqdm


class MetricWriter:
  """Scalars and images to TensorBoard (`workdir/tensorboard`), lines to the console; a progress
  bar over steps."""

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
    """Training scalars to TensorBoard and a console line."""
    self.scalars(step, metrics, "train")
    self.log(f"step {step}: " + " ".join(f"{k}={v:.5g}" for k, v in metrics.items()))

  def scalars(self, step: int, metrics: dict[str, float], prefix: str):
    """Scalars to TensorBoard as `prefix/name`."""
    if self.tb is not None:
      for name, value in metrics.items():
        self.tb.add_scalar(f"{prefix}/{name}", value, step)
      self.tb.flush()

  def image(self, tag: str, image, step: int):
    """An RGB image (uint8 [H, W, 3] or a PIL image) to TensorBoard."""
    if self.tb is not None:
      self.tb.add_image(tag, np.asarray(image), step, dataformats="HWC")
      self.tb.flush()

  def log(self, message: str):
    """A console line (process 0), printed above the progress bar when it shows."""
    if not self.active:
      return
    if self.bar.disable:
      print(message, flush=True)
    else:
      self.bar.write(message)

  def close(self):
    self.bar.close()
    if self.tb is not None:
      self.tb.close()
