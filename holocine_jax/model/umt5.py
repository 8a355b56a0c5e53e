"""The umT5 encoder (Wan2.2 / HoloCine text encoder) in Flax linen, used functionally.

T5 v1.1-style pre-norm encoder: RMS norm without mean subtraction, unscaled dot-product attention
with a relative position bias learned separately in EVERY layer (umT5; T5 shares layer 0's),
gated tanh-GELU FFN, no absolute positions, final RMS norm. Padded keys are masked and outputs at
and beyond each sequence's true length (the mask sum) are zeroed, as Wan does before padding the
context to 512 tokens. Norms and softmax run in fp32; the residual stream is in the compute dtype.

Legend: B batch, T query tokens, S key tokens (= T), D model dim, H heads, K head dim, F FFN dim,
V vocab, R relative-position buckets.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from holocine_jax import sharding
from holocine_jax.model.config import ModelConfig
from holocine_jax.model.layers import Linear, RMSNorm, constrain, layer_stack, param_init

ACT_BTD = ("act_batch", "act_text", "act_embed")
ACT_BTHK = ("act_batch", "act_text", "act_heads", "act_kv")
ACT_BHTS = ("act_batch", "act_heads", "act_text", None)
ACT_BTF = ("act_batch", "act_text", "act_mlp")


@dataclasses.dataclass(frozen=True)
class UMT5Config(ModelConfig):
  """umT5 encoder hyper-parameters; defaults are umT5-XXL as Wan2.2 ships it (bf16)."""

  vocab_size: int = 256384
  d_model: int = 4096
  d_kv: int = 64
  num_heads: int = 64
  d_ff: int = 10240
  num_layers: int = 24
  num_buckets: int = 32
  max_distance: int = 128
  eps: float = 1e-6
  param_dtype: str = "bfloat16"
  dtype: str = "bfloat16"
  scan_layers: bool = True

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.num_buckets < 4 or self.num_buckets % 2:
      raise ValueError(f"num_buckets must be even and >= 4 (bidirectional), got {self.num_buckets}")
    if self.max_distance <= self.num_buckets // 4:
      raise ValueError(
        f"max_distance {self.max_distance} must exceed the exact range {self.num_buckets // 4}"
      )
    self._check_dtypes()


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """[2*length-1] bidirectional T5 bucket of every offset (key - query) in [-(length-1), length-1].

  Host numpy in float32 with the reference's operation order (log, divide, scale, truncate), so
  the buckets equal transformers' `_relative_position_bucket` bit for bit (tested up to 1024).
  """
  rel = np.arange(-(length - 1), length, dtype=np.int64)
  half = num_buckets // 2
  max_exact = half // 2
  n = np.abs(rel)
  ratio = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(max_exact))
  ratio = ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
  large = np.minimum(max_exact + ratio.astype(np.int64), half - 1)
  return ((rel > 0) * half + np.where(n < max_exact, n, large)).astype(np.int32)


def bucket_table(length: int, config: UMT5Config) -> jnp.ndarray:
  """[T, S] relative bucket of key s seen from query t."""
  per_offset = jnp.asarray(
    relative_position_buckets(length, config.num_buckets, config.max_distance)
  )
  pos = jnp.arange(length)
  return per_offset[pos[None, :] - pos[:, None] + length - 1]


def _dense(features, in_axes, out_axes, stddev, name, dtype, param_dtype):
  """T5's bias-free projection with N(0, stddev) init."""
  return Linear(
    features,
    in_axes,
    out_axes,
    dtype=dtype,
    param_dtype=param_dtype,
    use_bias=False,
    kernel_init=nn.initializers.normal(stddev),
    name=name,
  )


class SelfAttention(nn.Module):
  """Unscaled multi-head self-attention plus this layer's own relative position bias."""

  config: UMT5Config

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxS, buckets_TxS):
    c = self.config
    h, k, d = c.num_heads, c.d_kv, c.d_model
    dense = dict(dtype=c.compute_dtype, param_dtype=c.params_dtype)
    proj = lambda name, std: _dense((h, k), ("embed",), ("heads", "kv"), std, name, **dense)
    q_BxTxHxK = constrain(proj("q", (d * k) ** -0.5)(x_BxTxD), ACT_BTHK)
    k_BxSxHxK = constrain(proj("k", d**-0.5)(x_BxTxD), ACT_BTHK)
    v_BxSxHxK = constrain(proj("v", d**-0.5)(x_BxTxD), ACT_BTHK)

    rel_bias_RxH = self.param(
      "rel_bias",
      param_init(nn.initializers.normal(d**-0.5), ("rel_buckets", "heads")),
      (c.num_buckets, h),
      c.params_dtype,
    )
    bias_HxTxS = jnp.take(rel_bias_RxH.astype(jnp.float32).T, buckets_TxS, axis=1)
    logits_BxHxTxS = jnp.einsum(
      "bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK, preferred_element_type=jnp.float32
    )
    logits_BxHxTxS = logits_BxHxTxS + bias_HxTxS[None]
    logits_BxHxTxS = jnp.where(
      mask_BxS[:, None, None, :], logits_BxHxTxS, jnp.finfo(jnp.float32).min
    )
    probs_BxHxTxS = constrain(jax.nn.softmax(logits_BxHxTxS, axis=-1), ACT_BHTS)
    out_BxTxHxK = jnp.einsum("bhts,bshk->bthk", probs_BxHxTxS.astype(c.compute_dtype), v_BxSxHxK)
    out_BxTxHxK = constrain(out_BxTxHxK, ACT_BTHK)
    return _dense((d,), ("heads", "kv"), ("embed",), (h * k) ** -0.5, "o", **dense)(out_BxTxHxK)


class GatedFFN(nn.Module):
  """wo(gelu_tanh(wi_0 x) * wi_1 x): T5 v1.1's gated-GELU feed-forward."""

  config: UMT5Config

  @nn.compact
  def __call__(self, x_BxTxD):
    c = self.config
    dense = dict(dtype=c.compute_dtype, param_dtype=c.params_dtype)
    wi = lambda name: _dense((c.d_ff,), ("embed",), ("mlp",), c.d_model**-0.5, name, **dense)
    h_BxTxF = nn.gelu(wi("wi_0")(x_BxTxD), approximate=True) * wi("wi_1")(x_BxTxD)
    h_BxTxF = constrain(h_BxTxF, ACT_BTF)
    return _dense((c.d_model,), ("mlp",), ("embed",), c.d_ff**-0.5, "wo", **dense)(h_BxTxF)


class UMT5Layer(nn.Module):
  """x -> x + Attn(norm(x)) -> x + FFN(norm(x)); returns (x, None) for nn.scan."""

  config: UMT5Config

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxS, buckets_TxS):
    c = self.config
    norm = lambda name: RMSNorm(
      c.eps, ("embed",), dtype=c.compute_dtype, param_dtype=c.params_dtype, name=name
    )
    x_BxTxD = x_BxTxD + SelfAttention(c, name="attn")(
      norm("norm_attn")(x_BxTxD), mask_BxS, buckets_TxS
    )
    x_BxTxD = constrain(x_BxTxD, ACT_BTD)
    x_BxTxD = x_BxTxD + GatedFFN(c, name="ffn")(norm("norm_ffn")(x_BxTxD))
    return constrain(x_BxTxD, ACT_BTD), None


class UMT5Encoder(nn.Module):
  """ids [B, T] + mask [B, T] -> last hidden state [B, T, D], zero at and beyond the true length."""

  config: UMT5Config

  @nn.compact
  def __call__(self, ids_BxT, mask_BxT):
    c = self.config
    _check_inputs(c, ids_BxT, mask_BxT)
    mask_BxT = mask_BxT.astype(bool)
    table_VxD = self.param(
      "token_embedding",
      param_init(nn.initializers.normal(1.0), ("vocab", "embed")),
      (c.vocab_size, c.d_model),
      c.params_dtype,
    )
    # gather from the sharded table into a replicated (small) activation, then slice by batch:
    # going straight to batch sharding makes the SPMD partitioner fully rematerialise it anyway
    x_BxTxD = constrain(jnp.take(table_VxD, ids_BxT, axis=0), (None, None, None))
    x_BxTxD = constrain(x_BxTxD.astype(c.compute_dtype), ACT_BTD)
    buckets_TxS = bucket_table(ids_BxT.shape[1], c)
    x_BxTxD = self._layers()(x_BxTxD, mask_BxT, buckets_TxS)[0]
    x_BxTxD = RMSNorm(
      c.eps, ("embed",), dtype=c.compute_dtype, param_dtype=c.params_dtype, name="norm_out"
    )(x_BxTxD)
    length_B = mask_BxT.sum(-1)
    keep_BxT = jnp.arange(ids_BxT.shape[1])[None] < length_B[:, None]
    return constrain(jnp.where(keep_BxT[..., None], x_BxTxD, 0).astype(c.compute_dtype), ACT_BTD)

  def _layers(self):
    """The layers: scanned (params stacked on a leading 'layers' axis) or unrolled."""
    c = self.config
    return layer_stack(UMT5Layer, c.num_layers, c.scan_layers, 2, c, name="layers")


def _check_inputs(c: UMT5Config, ids, mask):
  if ids.ndim != 2:
    raise ValueError(f"token ids must be [B, T], got shape {ids.shape}")
  if mask.shape != ids.shape:
    raise ValueError(f"mask shape {mask.shape} must equal the ids shape {ids.shape}")
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"token ids must be integers, got {ids.dtype}")


def init_fn(config: UMT5Config):
  """key -> boxed params, for `sharding.init_sharded` / `sharding.abstract_params`. The dummy
  tokens are built inside the traced function, so eval_shape / lower run no eager op."""
  model = UMT5Encoder(config)

  def init(key):
    ids_BxT = jnp.zeros((1, 8), jnp.int32)
    return model.init(key, ids_BxT, jnp.ones_like(ids_BxT, bool))["params"]

  return init


def encode(params, ids_BxT, mask_BxT, *, config: UMT5Config):
  """Functional forward pass: last hidden state [B, T, D], zeroed beyond each true length."""
  return UMT5Encoder(config).apply({"params": params}, ids_BxT, mask_BxT)


def make_encode_fn(config: UMT5Config, mesh, rules, shardings):
  """Jitted (params, ids [B, T], mask [B, T]) -> [B, T, D] on `mesh`; B a multiple of the shards.

  Params come in `shardings` (e.g. those of the params that `weights/store.load` restores); ids
  and mask are batch sharded; the output is sharded as ('act_batch', 'act_text', 'act_embed').
  """
  rules = sharding.logical_rules(rules)
  spec = lambda axes: nn.logical_to_mesh_sharding(jax.sharding.PartitionSpec(*axes), mesh, rules)
  tokens = spec(("act_batch", "act_text"))
  jitted = jax.jit(
    functools.partial(encode, config=config),
    in_shardings=(shardings, tokens, tokens),
    out_shardings=spec(ACT_BTD),
  )

  def call(params, ids_BxT, mask_BxT):
    with sharding.activate(mesh, rules):
      return jitted(params, ids_BxT, mask_BxT)

  call.jitted = jitted  # the planner compiles this for TPU slices
  return call
