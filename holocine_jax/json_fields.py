"""Strict checks of decoded JSON values: a ValueError naming the field and what it got.

A string is never a list, a boolean is not a number, a fraction is not an integer, null is not
a string. The sampler's request lines (`sampling/requests.py`) and the preprocessing manifest
(`data/manifest.py`) read their fields through these.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def json_type(value) -> str:
  """How an error names a value: its JSON type, or its repr for numbers."""
  names = {bool: "a boolean", str: "a string", list: "a list", dict: "an object"}
  if value is None:
    return "null"
  return names.get(type(value), f"{value!r}")


def string(field: str, value) -> str:
  if not isinstance(value, str):
    raise ValueError(f"{field!r} must be a string, got {json_type(value)}")
  return value


def integer(field: str, value, lo: int = 0, hi: int | None = None) -> int:
  """An int in [lo, hi]; a float only when it is whole (17.0), never truncated (17.9)."""
  whole = isinstance(value, float) and value.is_integer()
  if isinstance(value, bool) or not (isinstance(value, int) or whole):
    raise ValueError(f"{field!r} must be an integer, got {json_type(value)}")
  value = int(value)
  if value < lo or (hi is not None and value > hi):
    where = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    raise ValueError(f"{field!r} must be {where}, got {value}")
  return value


def number(field: str, value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ValueError(f"{field!r} must be a finite number, got {json_type(value)}")
  return float(value)


def items(field: str, value, item: Callable, what: str = "a list") -> list:
  """A list checked element by element: `item(f"{field}[i]", element)`."""
  if not isinstance(value, list):
    raise ValueError(f"{field!r} must be {what}, got {json_type(value)}")
  return [item(f"{field}[{i}]", v) for i, v in enumerate(value)]


def strings(field: str, value) -> list[str]:
  return items(field, value, string, "a list of strings")
