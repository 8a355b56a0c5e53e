"""DiT hyper-parameters and HoloCine switches, built from the `model` block of a config file."""

import dataclasses

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# The Linears of a DiT block (module paths inside a block) -> how many trailing input dims they
# contract (o contracts heads and head dim). Every one of them is a LoRA target by default (the
# Wan LoRA convention) and is stored quantized under lora_base int8 / nf4.
BLOCK_LINEARS = {
  "self_attn/q": 1,
  "self_attn/k": 1,
  "self_attn/v": 1,
  "self_attn/o": 2,
  "cross_attn/q": 1,
  "cross_attn/k": 1,
  "cross_attn/v": 1,
  "cross_attn/o": 2,
  "ffn_in": 1,
  "ffn_out": 1,
}
LORA_BASES = ("bf16", "int8", "nf4")


class ModelConfig:
  """Shared by the model config dataclasses: `param_dtype` / `dtype` fields as dtypes, and
  construction from a config-file block that rejects unknown fields by name."""

  def _check_dtypes(self):
    for name in ("param_dtype", "dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError as e:
        raise ValueError(f"{name} {getattr(self, name)!r} is not a dtype") from e

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)

  @classmethod
  def from_config(cls, block):
    """From an ml_collections block (or any mapping) of the dataclass fields."""
    fields = {f.name for f in dataclasses.fields(cls)}
    items = dict(block.items() if hasattr(block, "items") else block)
    unknown = sorted(set(items) - fields)
    if unknown:
      raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(fields)}")
    return cls(**items)


@dataclasses.dataclass(frozen=True)
class DiTConfig(ModelConfig):
  """The Wan2.2 DiT; defaults are the A14B expert (each of the two experts)."""

  dim: int = 5120
  num_layers: int = 40
  num_heads: int = 40
  ffn_dim: int = 13824
  freq_dim: int = 256
  text_dim: int = 4096
  in_channels: int = 16
  out_channels: int = 16
  patch_size: tuple[int, int, int] = (1, 2, 2)
  eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_max_positions: int = 1024
  self_attention: str = "full"  # "full" | "sparse" (HoloCine inter-shot sparse)
  attention_impl: str = "auto"  # sparse: "auto" | "reference" | "packed" | "kernel"
  block_q: int = 512  # Pallas kernel block sizes (tokens)
  block_kv: int = 512
  query_chunk: int = 1024  # XLA full / cross-attention: queries per lax.map step (memory bound)
  window_cross_attention: bool = True
  param_dtype: str = "float32"
  dtype: str = "bfloat16"
  scan_layers: bool = True
  remat_policy: str = "none"
  # LoRA: rank 0 = none; the update (x A) B is scaled by alpha / rank (alpha 0: alpha = rank).
  # With rank > 0 the frozen base is declared bfloat16 (lora_base int8 / nf4: every block Linear
  # kernel quantized, QLoRA) and the adapters param_dtype.
  lora_rank: int = 0
  lora_alpha: float = 0.0
  lora_targets: tuple[str, ...] = tuple(BLOCK_LINEARS)
  lora_base: str = "bf16"

  def __post_init__(self):
    object.__setattr__(self, "patch_size", tuple(self.patch_size))
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
    if self.dim % self.num_heads:
      raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
    if self.head_dim % 2 or self.head_dim < 6:
      raise ValueError(f"head_dim {self.head_dim} must be even and >= 6 for 3D RoPE")
    if self.self_attention not in ("full", "sparse"):
      raise ValueError(f"self_attention must be 'full' or 'sparse', got {self.self_attention!r}")
    if self.attention_impl not in ("auto", "reference", "packed", "kernel"):
      raise ValueError(f"unknown attention_impl {self.attention_impl!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
    self._check_lora()
    self._check_dtypes()

  def _check_lora(self):
    if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
      raise ValueError(f"lora_rank must be an integer >= 0, got {self.lora_rank!r}")
    if self.lora_alpha < 0:
      raise ValueError(f"lora_alpha must be >= 0 (0: alpha = rank), got {self.lora_alpha}")
    unknown = [t for t in self.lora_targets if t not in BLOCK_LINEARS]
    if unknown:
      raise ValueError(f"unknown lora_targets {unknown}; known: {list(BLOCK_LINEARS)}")
    if self.lora_base not in LORA_BASES:
      raise ValueError(f"lora_base must be one of {LORA_BASES}, got {self.lora_base!r}")
    if self.lora_base != "bf16" and not self.lora_rank:
      raise ValueError(
        f"lora_base={self.lora_base!r} quantizes a LoRA's frozen base: set lora_rank"
      )

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def lora_scale(self) -> float:
    """alpha / rank, the factor on the LoRA update."""
    return (self.lora_alpha or self.lora_rank) / self.lora_rank if self.lora_rank else 0.0

  @property
  def base_dtype(self):
    """Dtype of the non-adapter params: bfloat16 under LoRA (a frozen base), else param_dtype."""
    return jnp.dtype(jnp.bfloat16) if self.lora_rank else self.params_dtype
