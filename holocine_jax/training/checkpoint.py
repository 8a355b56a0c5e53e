"""Checkpoints: one orbax CheckpointManager holding the train state and the grain iterator.

Saves are asynchronous (the step loop continues while arrays are written), keep the newest N,
and are also forced at the preemption sync point (multi-host, jax's preemption service) or after
SIGTERM (single host). A save killed half-way leaves only a temporary folder that the manager
ignores and removes, so restoring always reads the newest complete checkpoint. A checkpoint
restores on any mesh and process count (arrays are resharded on read).
"""

import dataclasses
import json
import signal
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class IteratorHandler(grain.checkpoint.CheckpointHandler):
  """grain's iterator handler, restorable on another process count.

  Every host's pipeline position is the same global batch index, so a host without its own
  file (the job shrank or grew) takes the common position; differing positions are an error.
  """

  def restore(self, directory, item=None, args=None):
    item = item or args.item
    own = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if own.exists():
      return super().restore(directory, item=item, args=args)
    states = {f.read_text() for f in directory.glob("process_*-of-*.json")}
    if len(states) != 1:
      raise ValueError(f"{directory}: hosts saved different data positions {sorted(states)}")
    item.set_state(json.loads(states.pop()))
    return item


@ocp.args.register_with_handler(IteratorHandler, for_save=True)
@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(IteratorHandler, for_restore=True)
@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
  item: Any


class Checkpointer:
  """Train state + data iterator in `directory`; the loop decides when to save."""

  def __init__(self, directory, *, keep: int, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      enable_async_checkpointing=async_save,
      create=True,
      cleanup_tmp_directories=True,
    )
    self.manager = ocp.CheckpointManager(
      directory,
      options=options,
      item_handlers=dict(state=ocp.StandardCheckpointHandler(), data=IteratorHandler()),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, iterator) -> None:
    """Starts saving `step` (asynchronously: arrays are copied off-device, then written)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=IteratorSave(iterator))
    self.manager.save(step, args=args, force=True)

  def restore(self, step: int, state_like, shardings, iterator):
    """The state saved at `step`, placed in `shardings`; `iterator` is moved to its position."""
    abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_like, shardings
    )
    args = ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), data=IteratorRestore(iterator)
    )
    return self.manager.restore(step, args=args).state

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def close(self):
    """Waits for pending saves, then releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()


class SigtermFlag:
  """Records SIGTERM (a single-host preemption notice) so the loop can save and stop."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)
