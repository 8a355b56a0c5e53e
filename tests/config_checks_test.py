"""Config values: overrides parse strictly and name their key; train settings that cannot run
are refused before anything is written."""

import os

import pytest

from holocine_jax import config_file, train

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
    ("train.learning_rate=nan", "train.learning_rate must be a finite number > 0, got nan"),
  ],
)
def test_train_refuses_settings_that_cannot_run(tmp_path, monkeypatch, override, match):
  monkeypatch.chdir(ROOT)
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=match):
    train.main(["--config", "configs/tiny.py", "--workdir", str(workdir), "--set", override])
  assert not workdir.exists()
