"""Loads `path/to/config.py[:arg]` files (each defines `get_config(arg)`) and applies overrides.

Overrides are `dotted.key=value` strings, parsed strictly to the type of the existing value
(`parse_value`: booleans true/false/yes/no/1/0, integers without a fraction; errors name the key):
  load("configs/tiny.py:attention=sparse", ["train.num_steps=50", "data.seed=3"])
"""

import ast
import importlib.util
import os
from collections.abc import Sequence

import ml_collections


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Imports the config file named by `spec` ('path.py' or 'path.py:arg') and applies overrides."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist (spec {spec!r})")
  module_spec = importlib.util.spec_from_file_location(
    f"_config_{abs(hash(path))}", os.path.abspath(path)
  )
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"config file {path!r} has no get_config(arg)")
  config = module.get_config(arg or None)
  for item in overrides:
    apply_override(config, item)
  return config


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
  """Sets one `dotted.key=value` in place; the value takes the type of the current one."""
  key, sep, text = item.partition("=")
  if not sep:
    raise ValueError(f"override {item!r} is not key=value")
  *parents, leaf = key.split(".")
  node = config
  for name in parents:
    if name not in node:
      raise KeyError(f"override {item!r}: no config block {name!r}")
    node = node[name]
  if leaf not in node:
    raise KeyError(f"override {item!r}: unknown key {key!r}; known: {sorted(node.keys())}")
  node[leaf] = parse_value(key, text, node[leaf])


def parse_value(key: str, text: str, current):
  """`text` as the type of `current` (also for config-file args); a ValueError names `key`."""
  try:
    return _parse(text, current)
  except (ValueError, SyntaxError) as e:
    raise ValueError(f"config {key}={text!r}: {e}") from None


def _parse(text: str, current):
  if isinstance(current, bool):
    if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
      raise ValueError("expected a boolean (true/false, yes/no, 1/0)")
    return text.lower() in ("1", "true", "yes")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      pass
    try:
      number = float(text)  # 1e3 is an integer; 2.5 and abc are not
    except ValueError:
      number = None
    if number is None or not number.is_integer():
      raise ValueError("expected an integer")
    return int(number)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    return text
  return ast.literal_eval(text)
