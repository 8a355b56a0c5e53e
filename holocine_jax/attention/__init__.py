"""One entry point for the DiT's attention: picks the implementation by mode and config.

Legend: B batch, L video tokens, T text tokens, H heads, K head dim.
"""

from holocine_jax.attention import masks, reference
from holocine_jax.layout import ShotBatch

SELF_ATTENTION_MODES = ("full", "sparse")


def self_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, *, mode: str, shots: ShotBatch | None):
  """Full or HoloCine sparse inter-shot self-attention over the video tokens."""
  if mode == "full":
    return reference.attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK)
  if mode == "sparse":
    if shots is None:
      raise ValueError("self_attention='sparse' needs a ShotBatch describing the shots")
    return reference.sparse_shot_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, shots)
  raise ValueError(f"unknown self-attention mode {mode!r}, expected one of {SELF_ATTENTION_MODES}")


def cross_attention(q_BxLxHxK, k_BxTxHxK, v_BxTxHxK, *, shots: ShotBatch | None):
  """Video-to-text attention; window-masked when `shots` carries text windows."""
  bias_BxLxT = None
  if shots is not None and shots.text_allow_BxNxT is not None:
    bias_BxLxT = masks.window_cross_bias(shots)
  return reference.attention(q_BxLxHxK, k_BxTxHxK, v_BxTxHxK, bias_BxLxM=bias_BxLxT)
