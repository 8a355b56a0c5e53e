"""Checkpoints: one orbax CheckpointManager holding the train state and the grain iterator.

Saves are asynchronous (the step loop continues while arrays are written), keep the newest N,
and are also forced at the preemption sync point (multi-host, jax's preemption service) or after
SIGTERM (single host). A save killed half-way leaves only a temporary folder that the manager
ignores and removes, so restoring always reads the newest complete checkpoint. A complete one
that was damaged later (files lost or corrupted) is skipped: `restore_latest` falls back step by
step to the newest one that restores, warning with each bad step's reason, and moves the bad ones
(never deletes them) to `<directory>.unrestorable/` so their step numbers can be saved again.
A checkpoint restores on any mesh and process count (arrays are resharded on read).
"""

import dataclasses
import json
import os
import shutil
import signal
from collections.abc import Callable
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


class CheckpointRestoreError(RuntimeError):
  """No checkpoint in the directory restores."""


class Checkpointer:
  """Train state + data iterator in `directory`; the loop decides when to save."""

  def __init__(self, directory, *, keep: int, async_save: bool = True):
    self.directory = os.fspath(directory)
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

  def restore_latest(self, state_like, shardings, iterator, log: Callable[[str], None] = print):
    """The newest checkpoint's state that restores (None if there is none); `iterator` is moved
    to its position. Newer steps that fail are warned about and moved aside; if every step fails
    nothing is moved and CheckpointRestoreError lists the reasons."""
    bad = {}
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self.restore(step, state_like, shardings, iterator)
      except Exception as e:  # noqa: BLE001  (orbax and tensorstore raise many kinds)
        bad[step] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
        log(f"warning: checkpoint step {step} cannot be restored ({bad[step]})")
        continue
      if bad:
        self._set_aside(bad, log)
        log(f"warning: resuming from step {step}, the newest checkpoint that restores")
      return state
    if bad:
      reasons = "; ".join(f"step {k}: {v}" for k, v in bad.items())
      raise CheckpointRestoreError(
        f"no checkpoint in {self.directory} restores ({reasons}). If the model config changed, "
        "use a new workdir; to start over, move the checkpoints away."
      )
    return None

  def _set_aside(self, bad: dict[int, str], log: Callable[[str], None]) -> None:
    """Moves unrestorable steps to `<directory>.unrestorable/<step>` (process 0), then syncs."""
    aside = self.directory.rstrip("/") + ".unrestorable"
    if jax.process_index() == 0:
      for step in bad:
        os.makedirs(aside, exist_ok=True)
        target = os.path.join(aside, str(step))
        shutil.rmtree(target, ignore_errors=True)  # an older copy set aside before
        shutil.move(os.path.join(self.directory, str(step)), target)
        log(f"warning: moved the unrestorable checkpoint step {step} to {target}")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("holocine_checkpoint_set_aside")
    self.manager.reload()

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
