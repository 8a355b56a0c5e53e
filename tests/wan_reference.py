"""Torch references for the DiT tests: a tiny random diffusers Wan DiT, and attention processors
that reproduce HoloCine's released sparse self-attention and window cross-attention masks."""

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel

TINY = dict(
  patch_size=(1, 2, 2),
  num_attention_heads=2,
  attention_head_dim=16,
  in_channels=4,
  out_channels=4,
  text_dim=24,
  freq_dim=32,
  ffn_dim=64,
  num_layers=2,
  rope_max_seq_len=1024,
)


def tiny_wan(seed: int = 0, **overrides) -> WanTransformer3DModel:
  """Tiny diffusers Wan DiT with every parameter (norms and tables too) randomised."""
  torch.manual_seed(seed)
  model = WanTransformer3DModel(**{**TINY, **overrides}).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.3)
  return model


def state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def run(model, latents_bfhwc, timestep, context) -> np.ndarray:
  """diffusers forward on channels-last numpy inputs, channels-last numpy output."""
  with torch.no_grad():
    out = model(
      torch.from_numpy(np.asarray(latents_bfhwc)).permute(0, 4, 1, 2, 3),
      torch.from_numpy(np.asarray(timestep)),
      torch.from_numpy(np.asarray(context)),
    ).sample
  return out.permute(0, 2, 3, 4, 1).numpy()


def _rope(x, cos, sin):
  x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
  c, s = cos[..., 0::2], sin[..., 1::2]
  out = torch.empty_like(x)
  out[..., 0::2] = x1 * c - x2 * s
  out[..., 1::2] = x1 * s + x2 * c
  return out


class Processor:
  """A Wan attention processor whose core `attend(q, k, v)` ([B, H, L, K]) is swapped."""

  def __init__(self, attend):
    self.attend = attend

  def __call__(
    self,
    attn,
    hidden_states,
    encoder_hidden_states=None,
    attention_mask=None,
    rotary_emb=None,
    **kwargs,
  ):
    ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
    k = attn.norm_k(attn.to_k(ctx)).unflatten(2, (attn.heads, -1))
    v = attn.to_v(ctx).unflatten(2, (attn.heads, -1))
    if rotary_emb is not None:
      q, k = _rope(q, *rotary_emb), _rope(k, *rotary_emb)
    out = self.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return attn.to_out[0](out.transpose(1, 2).flatten(2))


def released_sparse(token_cuts, per_g):
  """HoloCine attention_per_batch_with_shots: each shot's queries attend to its own keys and
  the first `per_g` keys of every shot (flash varlen replaced by per-shot SDPA)."""

  def attend(q, k, v):
    outs = []
    for b, cuts in enumerate(token_cuts):
      spans = list(zip(cuts[:-1], cuts[1:], strict=True))
      kg = torch.cat([k[b, :, a : a + per_g] for a, _ in spans], dim=1)
      vg = torch.cat([v[b, :, a : a + per_g] for a, _ in spans], dim=1)
      outs.append(
        torch.cat(
          [
            F.scaled_dot_product_attention(
              q[b : b + 1, :, a:e],
              torch.cat([k[b : b + 1, :, a:e], kg[None]], dim=2),
              torch.cat([v[b : b + 1, :, a:e], vg[None]], dim=2),
            )
            for a, e in spans
          ],
          dim=2,
        )
      )
    return torch.cat(outs)

  return attend


def released_window_bias(positions, shot_indices, hw, text_len):
  """HoloCine's cross-attention bias for one element: [1, 1, L, T], -1e4 outside windows."""
  g0, g1 = positions["global"]
  shot_ranges = positions["shots"]
  max_end = max([g1] + [int(r[1]) for r in shot_ranges])
  global_mask = torch.zeros(text_len, dtype=torch.bool)
  global_mask[g0 : g1 + 1] = True
  shot_table = torch.zeros(len(shot_ranges), text_len, dtype=torch.bool)
  for sid, (s0, s1) in enumerate(shot_ranges):
    shot_table[sid, s0 : s1 + 1] = True
  vid_shot = torch.as_tensor(shot_indices)[None].repeat_interleave(hw, dim=1)
  allow = shot_table[vid_shot] | global_mask.view(1, 1, text_len)
  pad_mask = torch.zeros(text_len, dtype=torch.bool)
  pad_mask[max_end + 1 :] = True
  allow = allow | pad_mask.view(1, 1, text_len)
  bias = torch.zeros(allow.shape).masked_fill(~allow, -1e4)
  return bias.unsqueeze(1)


def masked_sdpa(bias):
  return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def set_processors(model, self_attend=None, cross_attend=None):
  for block in model.blocks:
    if self_attend is not None:
      block.attn1.set_processor(Processor(self_attend))
    if cross_attend is not None:
      block.attn2.set_processor(Processor(cross_attend))
