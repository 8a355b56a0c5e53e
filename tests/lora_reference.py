"""Wan LoRA files as the PyTorch tools write them, spelled out key by key (not through our
rules): random down / up / alpha per block Linear of the tiny DiT, saved in diffusers/peft,
original (ComfyUI; lora_down / lora_up or lora_A / lora_B) or musubi-tuner names."""

import numpy as np
from safetensors.numpy import save_file

D, F = 32, 64  # configs/tiny.py and wan_reference.TINY: dim, ffn_dim
# module -> (original name, diffusers name, torch weight [out, in])
MODULES = {
  **{
    f"{attn}/{p}": (f"{attn}.{p}", f"{a}.{d}", (D, D))
    for attn, a in (("self_attn", "attn1"), ("cross_attn", "attn2"))
    for p, d in zip("qkvo", ("to_q", "to_k", "to_v", "to_out.0"), strict=True)
  },
  "ffn_in": ("ffn.0", "ffn.net.0.proj", (F, D)),
  "ffn_out": ("ffn.2", "ffn.net.2", (D, F)),
}


def torch_lora(modules=tuple(MODULES), layers=(0, 1), rank=4, alpha=None, seed=0):
  """{(module, layer): (down [r, in], up [out, r], alpha or None)}, random."""
  rng = np.random.RandomState(seed)
  out = {}
  for m in modules:
    n_out, n_in = MODULES[m][2]
    for i in layers:
      out[m, i] = (
        rng.randn(rank, n_in).astype(np.float32),
        rng.randn(n_out, rank).astype(np.float32),
        alpha,
      )
  return out


# Linears outside the blocks: (original name, diffusers name, torch weight [out, in])
OUTSIDE = (
  ("head.head", "proj_out", (16, D)),
  ("time_projection.1", "condition_embedder.time_proj", (6 * D, D)),
)


def save(path, lora, naming, bias=False, outside=False):
  """Writes `torch_lora` in `naming`'s keys, spelled out here (not through our rules); a
  diffusers file folds alpha / r into up, as diffusers' own conversion does. `bias`: random bias
  deltas too (`.diff_b`, lightx2v's distill LoRAs; peft's `lora_B.bias` in diffusers names);
  `outside`: rank-2 pairs (no alpha) on the Linears of OUTSIDE too."""
  rng = np.random.RandomState(7)
  state = {}
  for original, diffusers, (n_out, n_in) in OUTSIDE if outside else ():
    down, up = 0.3 * rng.randn(2, n_in), 0.3 * rng.randn(n_out, 2)
    if naming == "diffusers":
      base, names = f"transformer.{diffusers}", ("lora_A.weight", "lora_B.weight")
    else:
      base, names = f"diffusion_model.{original}", ("lora_down.weight", "lora_up.weight")
    state[f"{base}.{names[0]}"] = down.astype(np.float32)
    state[f"{base}.{names[1]}"] = up.astype(np.float32)
  for (m, i), (down, up, alpha) in lora.items():
    original, diffusers, _ = MODULES[m]
    if naming == "diffusers":
      fold = 1.0 if alpha is None else alpha / down.shape[0]
      base, names = f"transformer.blocks.{i}.{diffusers}", ("lora_A.weight", "lora_B.weight")
      down, up, alpha = down, (up * fold).astype(np.float32), None
    elif naming == "musubi":
      base = f"lora_unet_blocks_{i}_{original.replace('.', '_')}"
      names = ("lora_down.weight", "lora_up.weight")
    else:  # wan; wan_ab: lora_A / lora_B; wan_bare: no `diffusion_model.` (DiffSynth-Studio)
      base = f"{'' if naming == 'wan_bare' else 'diffusion_model.'}blocks.{i}.{original}"
      names = (
        ("lora_A.weight", "lora_B.weight")
        if naming in ("wan_ab", "wan_bare")
        else ("lora_down.weight", "lora_up.weight")
      )
    state[f"{base}.{names[0]}"], state[f"{base}.{names[1]}"] = down, up
    if alpha is not None:
      state[f"{base}.alpha"] = np.asarray(alpha, np.float32)
    if bias:
      name = "lora_B.bias" if naming == "diffusers" else "diff_b"
      state[f"{base}.{name}"] = np.random.RandomState(i).randn(up.shape[0]).astype(np.float32)
  save_file(state, str(path))
  return str(path)


def delta(lora, module, layer):
  """The update of a module's torch weight [out, in]: (alpha / r) up @ down."""
  down, up, alpha = lora[module, layer]
  return (alpha or down.shape[0]) / down.shape[0] * up @ down
