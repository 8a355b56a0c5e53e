"""The toy text embedding: a fixed vector per prompt word, with HoloCine's text windows.

No tokenizer or weights: the synthetic training data embeds its captions this way, and sampling
and data preparation use the same embedding so a tiny model trained on it can be sampled and
evaluated out of the box.
Legend: N prompt tokens (plus EOS), E text dim, S shots.
"""

import re
import zlib

import numpy as np

from holocine_jax import scene as scene_lib

EOS = "</s>"
_TOKEN_RE = re.compile(r"\[[a-z ]+\]|[A-Za-z0-9]+")


def word_vector(word: str, dim: int) -> np.ndarray:
  """A fixed unit-variance vector per word (seeded by the word's CRC32)."""
  return np.random.default_rng(zlib.crc32(word.encode())).standard_normal(dim).astype(np.float32)


def toy_tokenize(prompt: str) -> list[str]:
  """Words and HoloCine markers ("[shot cut]" is one token) of a prompt string."""
  return _TOKEN_RE.findall(prompt)


def toy_windows(tokens: list[str]) -> np.ndarray:
  """[S+1, 2] token ranges (global, then shots) as HoloCine's prompter draws them."""
  g, s = tokens.index(scene_lib.GLOBAL_MARKER), tokens.index(scene_lib.SHOTS_MARKER)
  cuts = [i for i, t in enumerate(tokens) if t == scene_lib.CUT_MARKER]
  starts = [s] + [c + 1 for c in cuts]
  ends = [c + 1 for c in cuts] + [len(tokens)]
  return np.asarray([(g, s), *zip(starts, ends, strict=True)], np.int32)


def toy_text_embedding(prompt: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
  """(context [N, E] for the prompt's tokens plus EOS, text ranges [S+1, 2])."""
  tokens = toy_tokenize(prompt)
  context_NxE = np.stack([word_vector(t, dim) for t in tokens + [EOS]])
  return context_NxE, toy_windows(tokens)
