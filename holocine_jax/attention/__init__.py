"""One entry point for the DiT's attention: picks the implementation by mode, config, backend.

Sparse implementations: "reference" (dense masked oracle), "packed" (portable XLA, shots packed
into fixed slots), "kernel" (Pallas block-sparse flash kernel: Mosaic grid style on TPU, Triton
loop style on GPU, interpret mode on CPU). "auto" takes the kernel on TPU and GPU and the packed
path on CPU. Full attention: "kernel" runs the same kernel on a one-shot layout (flash
attention), "reference" the oracle, anything else exact XLA attention over query chunks
(`chunked.py`). Cross-attention is always chunked, so the [L, T] logits of window
cross-attention never exist at once.

Full attention on TPU uses our kernel, not jax's splash attention: both visit every kv block
(a one-shot layout's table spans the sequence; splash's full mask does too) and compile fwd+bwd
in seconds; compiled for one v5p chip at 95,160 tokens (bf16, head_dim 128, 512 blocks) both
need the same temporary memory forward (3.63 vs 3.64 GiB at 40 heads) and are within 15% of
each other fwd+bwd, either way round (7.27 vs 6.45 GiB at 40 heads, 1.36 vs 1.62 at 10 heads;
`benchmarks/shot_attention.py --tpu`). The kernel keeps one code path for both modes on TPU and
GPU, takes token-major operands, masks padding by shot id instead of segment ids, and builds no
per-length mask tables at trace time.

Every choice follows the platform compiled for (`target.platform()`: the mesh in context, else
the host), so a deviceless TPU mesh on a CPU host gets the Mosaic kernel, not interpret mode.

Under a mesh the kernel runs in `shard_map` with batch split as `act_batch` and heads split over
the `act_heads` axes plus any `act_length` (context) axes: a sequence-sharded input is thus
re-laid out heads<->sequence by one all-to-all before the kernel, which sees whole sequences.
Legend: B batch, L video tokens, T text tokens, H heads, K head dim.
"""

import functools

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P

from holocine_jax import layout
from holocine_jax.attention import chunked, masks, packed, reference, shot_kernel
from holocine_jax.attention.target import platform
from holocine_jax.layout import ShotBatch

SELF_ATTENTION_MODES = ("full", "sparse")
IMPLEMENTATIONS = ("auto", "reference", "packed", "kernel")


def resolve_impl(impl: str) -> str:
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {impl!r}, expected {IMPLEMENTATIONS}")
  if impl == "auto":
    return "kernel" if platform() in ("tpu", "gpu") else "packed"
  return impl


def self_attention(
  q_BxLxHxK,
  k_BxLxHxK,
  v_BxLxHxK,
  *,
  mode: str,
  shots: ShotBatch | None,
  impl: str = "auto",
  block_sizes: shot_kernel.BlockSizes = shot_kernel.BlockSizes(),
  query_chunk: int = 1024,
):
  """Full or HoloCine sparse inter-shot self-attention over the video tokens."""
  if mode not in SELF_ATTENTION_MODES:
    raise ValueError(f"unknown self-attention mode {mode!r}, expected {SELF_ATTENTION_MODES}")
  impl = resolve_impl(impl)
  if mode == "full":
    real_BxL = None if shots is None else shots.shot_id_BxL >= 0  # bucket padding: never seen
    if impl == "reference":
      allow = None if real_BxL is None else real_BxL[:, None, :]
      return reference.attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, allow_BxLxM=allow)
    if impl != "kernel":
      return chunked.chunked_attention(
        q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, kv_real_BxM=real_BxL, chunk=query_chunk
      )
    shots = layout.dense_batch(*q_BxLxHxK.shape[:2], real_BxL)
  if shots is None:
    raise ValueError("self_attention='sparse' needs a ShotBatch describing the shots")
  if impl == "reference":
    return reference.sparse_shot_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, shots)
  if impl == "packed":
    return packed.packed_shot_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, shots)
  kernel = functools.partial(shot_kernel.shot_attention, block_sizes=block_sizes)
  if jax.sharding.get_abstract_mesh().empty:
    return kernel(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, shots)
  return _in_shard_map(kernel, q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, shots)


def _in_shard_map(kernel, q, k, v, shots: ShotBatch):
  """Runs `kernel` per device: local batch, local heads, whole sequence."""
  batch, length, heads, _ = nn.logical_to_mesh_axes(
    ("act_batch", "act_length", "act_heads", "act_kv")
  )
  as_tuple = lambda axes: () if axes is None else (axes,) if isinstance(axes, str) else axes
  head_axes = as_tuple(heads) + as_tuple(length)
  qkv = P(batch, None, head_axes or None, None)
  shot_specs = jax.tree.map(lambda _: P(batch), shots)
  return jax.shard_map(
    kernel, in_specs=(qkv, qkv, qkv, shot_specs), out_specs=qkv, check_vma=False
  )(q, k, v, shots)


def cross_attention(
  q_BxLxHxK, k_BxTxHxK, v_BxTxHxK, *, shots: ShotBatch | None, query_chunk: int = 1024
):
  """Video-to-text attention; window-masked when `shots` carries text windows."""
  bias_BxLxT = None
  if shots is not None and shots.text_allow_BxNxT is not None:
    bias_BxLxT = masks.window_cross_bias(shots)
  return chunked.chunked_attention(
    q_BxLxHxK, k_BxTxHxK, v_BxTxHxK, bias_BxLxM=bias_BxLxT, chunk=query_chunk
  )
