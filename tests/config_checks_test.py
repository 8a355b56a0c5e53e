"""Config values: overrides parse strictly and name their key; train settings that cannot run
are refused before anything is written."""

import json
import os

import pytest

from holocine_jax import config_file, train
from holocine_jax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  ("text", "current", "want"),
  [("1e3", 1, 1000), ("-5", 1, -5), ("yes", True, True), ("0", True, False), ("2.5", 1.0, 2.5)],
)
def test_override_values_parse_to_the_current_type(text, current, want):
  got = config_file.parse_value("k", text, current)
  assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
  ("text", "current", "match"),
  [
    ("abc", 1, "config train.x='abc': expected an integer"),
    ("17.9", 1, "config train.x='17.9': expected an integer"),
    ("maybe", True, r"config train.x='maybe': expected a boolean"),
    ("on", True, r"config train.x='on': expected a boolean"),
  ],
)
def test_bad_override_values_name_the_key(text, current, match):
  with pytest.raises(ValueError, match=match):
    config_file.parse_value("train.x", text, current)


@pytest.mark.parametrize(
  ("override", "match"),
  [
    ("train.num_steps=abc", "config train.num_steps='abc': expected an integer"),
    ("train.num_steps=-5", "train.num_steps must be an integer >= 1, got -5"),
    ("train.global_batch=0", "train.global_batch must be an integer >= 1, got 0"),
    ("train.learning_rate=nan", "train.learning_rate must be a finite number >= 0 .*, got nan"),
    (
      "train.learning_rate=-1e-4",
      "train.learning_rate must be a finite number >= 0 .*, got -0.0001",
    ),
  ],
)
def test_train_refuses_settings_that_cannot_run(tmp_path, monkeypatch, override, match):
  monkeypatch.chdir(ROOT)
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=match):
    train.main(["--config", "configs/tiny.py", "--workdir", str(workdir), "--set", override])
  assert not workdir.exists()


def _workdir_trained_with(tmp_path, *overrides):
  """A workdir whose config.json is what train.main wrote for configs/tiny.py + `overrides`."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  config = config_file.load("configs/tiny.py", overrides)
  (workdir / "config.json").write_text(json.dumps(json.loads(config.to_json_best_effort())))
  return workdir


@pytest.mark.parametrize(
  ("override", "key"),
  [("model.dim=64", "model.dim"), ("train.global_batch=16", "train.global_batch"),
   ("data.seed=3", "data.seed")],
)  # fmt: skip
def test_changed_model_batch_or_data_stream_is_refused(tmp_path, monkeypatch, override, key):
  monkeypatch.chdir(ROOT)
  monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("training started"))
  workdir = _workdir_trained_with(tmp_path)
  before = (workdir / "config.json").read_text()
  argv = ["--config", "configs/tiny.py", "--workdir", str(workdir), "--set", override]
  with pytest.raises(ValueError, match=rf"cannot change \({key}: .* -> .*\).*allow_config_change"):
    train.main(argv)
  assert (workdir / "config.json").read_text() == before


def test_allowed_and_safe_config_changes_resume(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(ROOT)
  result = loop.TrainResult(state=None, losses={}, start_step=0)
  monkeypatch.setattr(loop, "train", lambda *a, **k: result)
  workdir = _workdir_trained_with(tmp_path)
  argv = ["--config", "configs/tiny.py", "--workdir", str(workdir), "--set", "train.num_steps=9"]
  assert train.main(argv) == 0
  assert "config changes since the last run" in capsys.readouterr().out
  assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 9
  assert train.main([*argv, "--set", "model.dim=64", "--allow_config_change"]) == 0
  assert json.loads((workdir / "config.json").read_text())["model"]["dim"] == 64


@pytest.mark.parametrize(
  ("arg", "match"),
  [("window=maybe", "window='maybe'"), ("scan=on", "scan='on'"), ("size=huge", "size='huge'")],
)
def test_config_file_args_parse_strictly(arg, match):
  from configs import tiny

  with pytest.raises(ValueError, match=match):
    tiny.get_config(arg)
  assert tiny.get_config("window=false").model.window_cross_attention is False
  assert tiny.get_config("size=wide").model.dim == 64
