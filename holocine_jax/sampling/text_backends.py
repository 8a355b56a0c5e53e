"""Text conditioning for sampling: umT5 (`text.PromptEncoder`) or the toy embedding.

Both give `encode_for_cfg(scenes, negative_prompt) -> (positive, negative)` `text.EncodedText`:
positive rows carry HoloCine text windows, negative rows none. The toy backend is the word
embedding the synthetic training data uses (no tokenizer or weights), so a model trained with
`holocine_jax.train` on tiny configs can be sampled out of the box.
Legend: B scenes, T text length, E text dim, N prompt tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from holocine_jax import toy_text
from holocine_jax.layout import TextWindows
from holocine_jax.scene import Scene
from holocine_jax.text import EncodedText


class ToyText:
  """`toy_text.toy_text_embedding`, zero-padded to `text_len`."""

  def __init__(self, text_dim: int, text_len: int):
    self.text_dim, self.text_len = text_dim, text_len

  def _pad(self, context_NxE: np.ndarray) -> np.ndarray:
    n = context_NxE.shape[0]
    if n > self.text_len:
      raise ValueError(f"prompt has {n} toy tokens but text_len is {self.text_len}")
    return np.pad(context_NxE, ((0, self.text_len - n), (0, 0)))

  def encode_for_cfg(
    self, scenes: Sequence[Scene], negative_prompt: str
  ) -> tuple[EncodedText, EncodedText]:
    rows, windows = [], []
    for scene in scenes:
      context_NxE, ranges = toy_text.toy_text_embedding(scene.prompt(), self.text_dim)
      rows.append(self._pad(context_NxE))
      windows.append(TextWindows.from_ranges(ranges))
    neg_tokens = toy_text.toy_tokenize(negative_prompt) + [toy_text.EOS]
    neg_NxE = np.stack([toy_text.word_vector(t, self.text_dim) for t in neg_tokens])
    neg_BxTxE = np.broadcast_to(self._pad(neg_NxE), (len(scenes), self.text_len, self.text_dim))
    return (
      EncodedText(jnp.asarray(np.stack(rows)), windows),
      EncodedText(jnp.asarray(neg_BxTxE), [None] * len(scenes)),
    )
