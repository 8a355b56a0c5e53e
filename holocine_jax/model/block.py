"""One Wan2.2 DiT block: AdaLN-modulated self-attention, cross-attention, tanh-GELU FFN.

Modulation, norms and residual gating run in fp32 and cast back to the compute dtype, as Wan
does. Legend: B batch, L video tokens, T text tokens, D model dim, H heads, K head dim,
F FFN dim, R rotary pairs.
"""

import flax.linen as nn
import jax.numpy as jnp

from holocine_jax import attention
from holocine_jax.attention.shot_kernel import BlockSizes
from holocine_jax.layout import ShotBatch
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.layers import LayerNorm, Linear, RMSNorm, constrain, modulation_table
from holocine_jax.model.rope import apply_rope

ACT_BLD = ("act_batch", "act_length", "act_embed")
ACT_BLHK = ("act_batch", "act_length", "act_heads", "act_kv")


def block_linear(c: DiTConfig, path: str) -> dict:
  """Linear settings of the block module `path` ('self_attn/q', ..., 'ffn_out'): dtypes, LoRA
  (when a target) and the quantized base (lora_base int8 / nf4)."""
  return dict(
    dtype=c.compute_dtype,
    param_dtype=c.base_dtype,
    lora_rank=c.lora_rank if path in c.lora_targets else 0,
    lora_scale=c.lora_scale,
    adapter_dtype=c.params_dtype,
    quant="" if c.lora_base == "bf16" else c.lora_base,
  )


class Attention(nn.Module):
  """Multi-head attention with Wan's qk RMSNorm over all heads; self (with RoPE) or cross."""

  config: DiTConfig
  kind: str  # "self" | "cross"

  @nn.compact
  def __call__(self, x_BxLxD, kv_BxMxD, rope, shots: ShotBatch | None):
    c = self.config
    h, k = c.num_heads, c.head_dim
    linear = lambda name: block_linear(c, f"{self.kind}_attn/{name}")
    proj = lambda name: Linear((h, k), ("embed",), ("heads", "kv"), name=name, **linear(name))
    norm = lambda name: RMSNorm(
      c.eps, ("heads", "kv"), name=name, dtype=c.compute_dtype, param_dtype=c.base_dtype
    )
    q_BxLxHxK = norm("norm_q")(proj("q")(x_BxLxD))
    k_BxMxHxK = norm("norm_k")(proj("k")(kv_BxMxD))
    v_BxMxHxK = proj("v")(kv_BxMxD)
    if self.kind == "self":
      q_BxLxHxK = apply_rope(q_BxLxHxK, *rope)
      k_BxMxHxK = apply_rope(k_BxMxHxK, *rope)
      q_BxLxHxK, k_BxMxHxK, v_BxMxHxK = (
        constrain(t, ACT_BLHK) for t in (q_BxLxHxK, k_BxMxHxK, v_BxMxHxK)
      )
      out_BxLxHxK = attention.self_attention(
        q_BxLxHxK,
        k_BxMxHxK,
        v_BxMxHxK,
        mode=c.self_attention,
        shots=shots,
        impl=c.attention_impl,
        block_sizes=BlockSizes(c.block_q, c.block_kv),
        query_chunk=c.query_chunk,
      )
    else:
      q_BxLxHxK = constrain(q_BxLxHxK, ACT_BLHK)
      windows = shots if c.window_cross_attention else None
      out_BxLxHxK = attention.cross_attention(
        q_BxLxHxK, k_BxMxHxK, v_BxMxHxK, shots=windows, query_chunk=c.query_chunk
      )
    out_BxLxHxK = constrain(out_BxLxHxK, ACT_BLHK)
    return Linear((c.dim,), ("heads", "kv"), ("embed",), name="o", **linear("o"))(out_BxLxHxK)


class DiTBlock(nn.Module):
  """x -> x + g1*SelfAttn(mod(LN(x))) -> x + CrossAttn(LN'(x)) -> x + g2*FFN(mod(LN(x)))."""

  config: DiTConfig

  @nn.compact
  def __call__(self, x_BxLxD, context_BxTxD, temb_Bx6xD, rope, shots: ShotBatch | None):
    c = self.config
    dt = c.compute_dtype
    table_6xD = modulation_table(self, "modulation", 6, c.dim, c.base_dtype)
    mod_Bx6xD = table_6xD[None].astype(jnp.float32) + temb_Bx6xD.astype(jnp.float32)
    shift, scale, gate, c_shift, c_scale, c_gate = jnp.split(mod_Bx6xD, 6, axis=1)

    h_BxLxD = (LayerNorm(c.eps, name="norm1")(x_BxLxD) * (1 + scale) + shift).astype(dt)
    attn_BxLxD = Attention(c, "self", name="self_attn")(h_BxLxD, h_BxLxD, rope, shots)
    x_BxLxD = (x_BxLxD.astype(jnp.float32) + attn_BxLxD.astype(jnp.float32) * gate).astype(dt)
    x_BxLxD = constrain(x_BxLxD, ACT_BLD)

    h_BxLxD = LayerNorm(c.eps, affine=True, param_dtype=c.base_dtype, name="norm_cross")(
      x_BxLxD
    ).astype(dt)
    x_BxLxD = x_BxLxD + Attention(c, "cross", name="cross_attn")(
      h_BxLxD, context_BxTxD, None, shots
    )
    x_BxLxD = constrain(x_BxLxD, ACT_BLD)

    h_BxLxD = (LayerNorm(c.eps, name="norm_ffn")(x_BxLxD) * (1 + c_scale) + c_shift).astype(dt)
    ffn_in, ffn_out = block_linear(c, "ffn_in"), block_linear(c, "ffn_out")
    h_BxLxF = Linear((c.ffn_dim,), ("embed",), ("mlp",), name="ffn_in", **ffn_in)(h_BxLxD)
    h_BxLxF = constrain(nn.gelu(h_BxLxF, approximate=True), ("act_batch", "act_length", "act_mlp"))
    ff_BxLxD = Linear((c.dim,), ("mlp",), ("embed",), name="ffn_out", **ffn_out)(h_BxLxF)
    x_BxLxD = (x_BxLxD.astype(jnp.float32) + ff_BxLxD.astype(jnp.float32) * c_gate).astype(dt)
    return constrain(x_BxLxD, ACT_BLD), None
