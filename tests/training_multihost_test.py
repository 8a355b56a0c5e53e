"""Two local processes (jax.distributed on localhost, 4 CPU devices each) train and write one
checkpoint with both hosts' parts; one 8-device process resumes it and continues identically."""

import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np

from tests import support
from tests.support import ROOT, local_multihost

OVERRIDES = ("data.frame_choices=(17,)", "train.progress_bar=false", "train.log_every=1")
CONFIG = "configs/tiny.py:steps=8,ckpt_every=2"  # the resume test's program: a cached compile

DRIVER = textwrap.dedent(
  """
  import sys
  import jax
  import numpy as np
  from holocine_jax import config_file
  from holocine_jax.training import loop

  config = config_file.load(sys.argv[1], sys.argv[4:])
  result = loop.train(config, sys.argv[2])
  np.savez(sys.argv[3], start=result.start_step,
           losses=np.array([result.losses[k] for k in sorted(result.losses)]),
           **{str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(result.state.params))})
  """
)


def _single_process(tmp_path, workdir, name, cache_dir):
  script = tmp_path / "driver.py"
  script.write_text(DRIVER)
  out = tmp_path / f"{name}.npz"
  env = dict(
    os.environ,
    PYTHONPATH=ROOT,
    XLA_FLAGS=support.xla_flags(8),
    JAX_COMPILATION_CACHE_DIR=str(cache_dir),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  proc = subprocess.run(
    [sys.executable, str(script), CONFIG, str(workdir), str(out), *OVERRIDES],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(np.load(out))


def test_two_processes_match_one_and_checkpoint_consistently(tmp_path, tmp_path_factory):
  workdir = tmp_path / "two"
  codes = local_multihost.launch(
    os.path.join(ROOT, CONFIG), str(workdir), processes=2, devices_per_process=4,
    overrides=OVERRIDES, xla_flags=support.FAST_XLA_FLAGS, timeout=300,
  )  # fmt: skip
  logs = [(workdir / "logs" / f"process_{i}.log").read_text() for i in range(2)]
  assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
  two = [float(x) for x in re.findall(r"^step \d+: .*loss=([\d.]+)", logs[0], re.M)]
  assert len(two) == 8 and not re.search(r"^step \d+:", logs[1], re.M)  # process 0 logs

  for step in ("4", "8"):  # keep_checkpoints=3: 4, 6, 8
    data = sorted(os.listdir(workdir / "checkpoints" / step / "data"))
    assert "process_0-of-2.json" in data and "process_1-of-2.json" in data

  # One 8-device process resumes the two-process checkpoint of step 4 and continues like them.
  one = tmp_path / "one"
  shutil.copytree(workdir / "checkpoints" / "4", one / "checkpoints" / "4")
  cache = support.session_cache_dir(tmp_path_factory)
  resumed = _single_process(tmp_path, one, "one", cache)
  assert resumed["start"] == 4
  np.testing.assert_allclose(resumed["losses"], two[4:], rtol=1e-4)
