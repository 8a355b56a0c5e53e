"""The Wan2.2 DiT (one expert) with HoloCine's shot-aware attention.

Channels-last latents [B, F, H, W, C] -> patch tokens -> N blocks (scanned) -> head ->
velocity [B, F, H, W, C]. Legend: B batch, L video tokens, T text tokens, E text encoder dim,
D model dim, P patch volume * channels.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from holocine_jax.layout import ShotBatch
from holocine_jax.model.block import ACT_BLD, DiTBlock
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.layers import (
  LayerNorm,
  Linear,
  constrain,
  layer_stack,
  modulation_table,
)
from holocine_jax.model.rope import rope_tables

_REMAT_POLICIES = {
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def timestep_embedding(t_B, dim: int):
  """Sinusoidal [cos | sin] embedding with frequencies 10000^(-i/(dim/2)), fp32."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  args_BxH = t_B.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args_BxH), jnp.sin(args_BxH)], axis=-1)


def patchify(x_BxFxHxWxC, patch):
  """[B, F, H, W, C] -> [B, L, pt*ph*pw*C] (tokens row-major over the post-patch grid)."""
  b, f, h, w, c = x_BxFxHxWxC.shape
  pt, ph, pw = patch
  x = x_BxFxHxWxC.reshape(b, f // pt, pt, h // ph, ph, w // pw, pw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, (f // pt) * (h // ph) * (w // pw), pt * ph * pw * c)


def unpatchify(x_BxLxP, grid, patch):
  """Inverse of `patchify` for a post-patch grid (f, h, w)."""
  b = x_BxLxP.shape[0]
  (f, h, w), (pt, ph, pw) = grid, patch
  x = x_BxLxP.reshape(b, f, h, w, pt, ph, pw, -1)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, f * pt, h * ph, w * pw, x.shape[-1])


class WanDiT(nn.Module):
  """Wan2.2 T2V DiT. `shots` (a ShotBatch) drives sparse self- and window cross-attention."""

  config: DiTConfig

  @nn.compact
  def __call__(self, latents_BxFxHxWxC, timestep_B, context_BxTxE, shots: ShotBatch | None = None):
    c = self.config
    dt = c.compute_dtype
    _check_inputs(c, latents_BxFxHxWxC, timestep_B, context_BxTxE, shots)
    dense = dict(dtype=dt, param_dtype=c.base_dtype)
    f32 = dict(dtype=jnp.float32, param_dtype=c.base_dtype)
    _, f, h, w, _ = latents_BxFxHxWxC.shape
    pt, ph, pw = c.patch_size
    grid = (f // pt, h // ph, w // pw)

    x_BxLxP = patchify(latents_BxFxHxWxC, c.patch_size)
    x_BxLxD = Linear((c.dim,), ("patch",), ("embed",), name="patch_embedding", **dense)(x_BxLxP)
    x_BxLxD = constrain(x_BxLxD, ACT_BLD)

    t_BxF = timestep_embedding(timestep_B, c.freq_dim)
    temb_BxD = Linear((c.dim,), ("freq",), ("embed",), name="time_embedding_1", **f32)(t_BxF)
    temb_BxD = Linear((c.dim,), ("embed",), ("embed_out",), name="time_embedding_2", **f32)(
      nn.silu(temb_BxD)
    )
    temb_Bx6xD = Linear((6, c.dim), ("embed",), (None, "embed_out"), name="time_projection", **f32)(
      nn.silu(temb_BxD)
    )

    ctx_BxTxD = Linear((c.dim,), ("text_embed",), ("embed",), name="text_embedding_1", **dense)(
      context_BxTxE
    )
    ctx_BxTxD = Linear((c.dim,), ("embed",), ("embed_out",), name="text_embedding_2", **dense)(
      nn.gelu(ctx_BxTxD, approximate=True)
    )
    ctx_BxTxD = constrain(ctx_BxTxD, ("act_batch", "act_text", "act_embed"))

    rope = rope_tables(grid, c.head_dim, c.rope_theta, c.rope_max_positions)
    x_BxLxD = self._blocks()(x_BxLxD, ctx_BxTxD, temb_Bx6xD, rope, shots)[0]

    table_2xD = modulation_table(self, "head_modulation", 2, c.dim, c.base_dtype)
    mod_Bx2xD = table_2xD[None].astype(jnp.float32) + temb_BxD[:, None]
    shift_Bx1xD, scale_Bx1xD = jnp.split(mod_Bx2xD, 2, axis=1)
    x_BxLxD = LayerNorm(c.eps, name="norm_out")(x_BxLxD) * (1 + scale_Bx1xD) + shift_Bx1xD
    out_BxLxP = Linear(
      (math.prod(c.patch_size) * c.out_channels,), ("embed",), ("patch",), name="head", **dense
    )(x_BxLxD.astype(dt))
    return unpatchify(out_BxLxP, grid, c.patch_size)

  def _blocks(self):
    """The N blocks: scanned (params stacked on a leading 'layers' axis) or unrolled."""
    c = self.config
    block = DiTBlock
    if c.remat_policy != "none":
      block = nn.remat(block, policy=_REMAT_POLICIES[c.remat_policy], prevent_cse=not c.scan_layers)
    return layer_stack(block, c.num_layers, c.scan_layers, 4, c, name="blocks")


def init_fn(config: DiTConfig):
  """key -> boxed params. The parameter tree depends on neither the attention mode, its
  implementation nor the input size, so a 1-token dummy through plain XLA full attention (never
  the kernel's shard_map) initialises every variant. The dummies are built inside the traced
  function: eval_shape / lower never run an eager op (deviceless TPU meshes have no device)."""
  model = WanDiT(dataclasses.replace(config, self_attention="full", attention_impl="reference"))
  pt, ph, pw = config.patch_size

  def init(key):
    latents_BxFxHxWxC = jnp.zeros((1, pt, ph, pw, config.in_channels))
    context_BxTxE = jnp.zeros((1, 1, config.text_dim))
    return model.init(key, latents_BxFxHxWxC, jnp.zeros((1,)), context_BxTxE)["params"]

  return init


def _check_inputs(c: DiTConfig, latents, timestep, context, shots):
  if latents.ndim != 5 or latents.shape[-1] != c.in_channels:
    raise ValueError(
      f"latents must be [B, F, H, W, {c.in_channels}] (channels last), got {latents.shape}"
    )
  b, f, h, w, _ = latents.shape
  pt, ph, pw = c.patch_size
  if f % pt or h % ph or w % pw:
    raise ValueError(f"latent shape {latents.shape[1:4]} is not divisible by patch {c.patch_size}")
  if timestep.shape != (b,):
    raise ValueError(f"timestep must be [B]=[{b}], got {timestep.shape}")
  if context.ndim != 3 or context.shape[0] != b or context.shape[-1] != c.text_dim:
    raise ValueError(f"context must be [{b}, T, {c.text_dim}], got {context.shape}")
  if not jnp.issubdtype(latents.dtype, jnp.floating):
    raise ValueError(f"latents must be floating point, got {latents.dtype}")
  if c.self_attention == "sparse" and shots is None:
    raise ValueError("self_attention='sparse' needs `shots` (a layout.ShotBatch)")
  if shots is not None:
    num_tokens = (f // pt) * (h // ph) * (w // pw)
    if shots.shot_id_BxL.shape != (b, num_tokens):
      raise ValueError(
        f"shots describe {shots.shot_id_BxL.shape} tokens but the latents give [{b}, {num_tokens}]"
      )
    allow = shots.text_allow_BxNxT
    if allow is not None and allow.shape[-1] != context.shape[1]:
      raise ValueError(
        f"text windows cover {allow.shape[-1]} tokens but the context has {context.shape[1]}"
      )
