"""Runs as subprocesses sharing one persistent compilation cache: a run SIGKILLed mid-save and
resumed equals the straight run bit for bit; SIGTERM saves and stops; a NaN loss stops the run
with its step."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from holocine_jax import train
from tests import support

DRIVER = textwrap.dedent(
  """
  import os, signal, sys
  import jax
  import numpy as np
  from configs import tiny
  from holocine_jax import train
  from holocine_jax.training import loop

  workdir, out, kill_at, sig = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
  config = tiny.get_config("steps=8,ckpt_every=2")
  config.data.frame_choices = (17,)
  config.train.progress_bar = False
  if sig == "NAN":  # NaN latents: the same programs (cached compiles), a NaN loss at step 1
    open_source = loop.open_source

    class NanSource:
      def __init__(self, source):
        self.source = source

      def __len__(self):
        return len(self.source)

      def __getitem__(self, i):
        return {**self.source[i], "latents": self.source[i]["latents"] * np.nan}

    loop.open_source = lambda config: (NanSource(open_source(config)[0]), open_source(config)[1])

  def on_step(step, state, metrics):
    if step == kill_at:  # right after this step's async save was started
      os.kill(os.getpid(), getattr(signal, sig))

  result = loop.train(config, workdir, on_step=on_step)
  np.savez(out, start=result.start_step, steps=np.array(sorted(result.losses)),
           losses=np.array([result.losses[k] for k in sorted(result.losses)]),
           **{str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(result.state.params))})
  sys.exit(train.exit_code(result))
  """
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return support.session_cache_dir(tmp_path_factory)


def _run(tmp_path, cache_dir, workdir, name, kill_at=0, sig="SIGKILL"):
  env = dict(
    os.environ,
    PYTHONPATH=support.ROOT,
    XLA_FLAGS=support.xla_flags(8),  # 8 devices as in conftest
    JAX_COMPILATION_CACHE_DIR=str(cache_dir),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  script = tmp_path / "driver.py"
  script.write_text(DRIVER)
  out = tmp_path / f"{name}.npz"
  proc = subprocess.run(
    [sys.executable, str(script), str(workdir), str(out), str(kill_at), sig],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  return proc, (dict(np.load(out)) if out.exists() else None)


def _checkpoints(workdir):
  return sorted(p.name for p in (workdir / "checkpoints").iterdir())


def test_sigkill_mid_save_then_resume_equals_straight_run(tmp_path, cache_dir):
  straight_proc, straight = _run(tmp_path, cache_dir, tmp_path / "straight", "straight")
  assert straight_proc.returncode == 0, straight_proc.stderr[-3000:]
  assert straight["start"] == 0 and list(straight["steps"]) == list(range(1, 9))

  killed, _ = _run(tmp_path, cache_dir, tmp_path / "resumed", "killed", kill_at=6)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  resumed_proc, resumed = _run(tmp_path, cache_dir, tmp_path / "resumed", "resumed")
  assert resumed_proc.returncode == 0, resumed_proc.stderr[-3000:]
  # Killed right after the step-6 save began: resume from 6 if it completed, else from 4.
  start = int(resumed["start"])
  assert start in (4, 6), start
  assert list(resumed["steps"]) == list(range(start + 1, 9))
  np.testing.assert_array_equal(resumed["losses"], straight["losses"][start:])
  params = [k for k in straight if k.isdigit()]
  assert params
  for k in params:
    np.testing.assert_array_equal(resumed[k], straight[k], err_msg=f"param leaf {k}")
  assert _checkpoints(tmp_path / "resumed")[-1] == "8"


def test_sigterm_saves_and_stops_with_the_preemption_exit_code(tmp_path, cache_dir):
  proc, result = _run(tmp_path, cache_dir, tmp_path / "run", "run", kill_at=3, sig="SIGTERM")
  assert proc.returncode == train.PREEMPTED_EXIT_CODE == 143, proc.stderr[-3000:]
  # The notice arrives after step 3's check: step 4 sees it, saves and stops.
  assert "preemption notice: saved step 4" in proc.stdout
  assert list(result["steps"]) == [1, 2, 3, 4]
  assert _checkpoints(tmp_path / "run") == ["2", "4"]


def _lose_array_bytes(step_dir):
  for f in (step_dir / "state").rglob("*"):
    if f.is_file() and "/d/" in str(f):
      f.write_bytes(b"")


CORRUPTIONS = dict(
  metadata=lambda step_dir: (step_dir / "state" / "_METADATA").unlink(),
  data_position=lambda step_dir: (step_dir / "data" / "process_0-of-1.json").unlink(),
  array_bytes=_lose_array_bytes,
)


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_step(tmp_path, cache_dir):
  straight_proc, straight = _run(tmp_path, cache_dir, tmp_path / "straight", "straight")
  assert straight_proc.returncode == 0, straight_proc.stderr[-3000:]
  template = tmp_path / "template"  # SIGTERM after step 5: step 6 saved, then stop
  proc, _ = _run(tmp_path, cache_dir, template, "template", kill_at=5, sig="SIGTERM")
  assert proc.returncode == 143 and _checkpoints(template) == ["2", "4", "6"], proc.stderr[-3000:]
  for name, corrupt in CORRUPTIONS.items():
    workdir = tmp_path / name
    shutil.copytree(template, workdir)
    corrupt(workdir / "checkpoints" / "6")
    proc, resumed = _run(tmp_path, cache_dir, workdir, name)
    assert proc.returncode == 0, (name, proc.stderr[-3000:])
    assert "warning: checkpoint step 6 cannot be restored (" in proc.stdout, (name, proc.stdout)
    assert "warning: resuming from step 4" in proc.stdout, name
    assert int(resumed["start"]) == 4 and list(resumed["steps"]) == [5, 6, 7, 8], name
    np.testing.assert_array_equal(resumed["losses"], straight["losses"][4:], err_msg=name)
    assert _checkpoints(workdir)[-1] == "8"
    assert (tmp_path / name / "checkpoints.unrestorable" / "6").is_dir(), name  # kept


def test_nan_loss_stops_with_the_step(tmp_path, cache_dir):
  proc, result = _run(tmp_path, cache_dir, tmp_path / "run", "run", sig="NAN")
  assert proc.returncode != 0 and result is None
  assert "NonFiniteLossError: loss is nan at step 1 " in proc.stderr, proc.stderr[-3000:]
