"""Key maps: umT5 encoder checkpoints -> our UMT5Encoder params.

`RULES` reads transformers names (`UMT5EncoderModel`, or the encoder half of a full
`UMT5ForConditionalGeneration` / google/umt5-xxl checkpoint with `IGNORE`); `WAN_RULES` reads
Wan's own T5 names (`models_t5_umt5-xxl-enc-bf16.pth`, `WanTextEncoder` in HoloCine's diffsynth).
Both target scanned layers by default; `rules(scan_layers=False)` gives the unrolled layout.
"""

from holocine_jax.weights.keymap import Rule

# Per-layer (source suffix, our path under the layer, transform), transformers names.
_HF_LAYER = (
  (r"layer\.0\.layer_norm\.weight", "norm_attn/scale", "reshape"),
  (r"layer\.0\.SelfAttention\.q\.weight", "attn/q/kernel", "linear"),
  (r"layer\.0\.SelfAttention\.k\.weight", "attn/k/kernel", "linear"),
  (r"layer\.0\.SelfAttention\.v\.weight", "attn/v/kernel", "linear"),
  (r"layer\.0\.SelfAttention\.o\.weight", "attn/o/kernel", "linear"),
  (r"layer\.0\.SelfAttention\.relative_attention_bias\.weight", "attn/rel_bias", "reshape"),
  (r"layer\.1\.layer_norm\.weight", "norm_ffn/scale", "reshape"),
  (r"layer\.1\.DenseReluDense\.wi_0\.weight", "ffn/wi_0/kernel", "linear"),
  (r"layer\.1\.DenseReluDense\.wi_1\.weight", "ffn/wi_1/kernel", "linear"),
  (r"layer\.1\.DenseReluDense\.wo\.weight", "ffn/wo/kernel", "linear"),
)

# Wan's T5: x = fc2(fc1(x) * gelu(gate(x))): gate = wi_0 (GELU branch), fc1 = wi_1, fc2 = wo.
_WAN_LAYER = (
  (r"norm1\.weight", "norm_attn/scale", "reshape"),
  (r"attn\.q\.weight", "attn/q/kernel", "linear"),
  (r"attn\.k\.weight", "attn/k/kernel", "linear"),
  (r"attn\.v\.weight", "attn/v/kernel", "linear"),
  (r"attn\.o\.weight", "attn/o/kernel", "linear"),
  (r"pos_embedding\.embedding\.weight", "attn/rel_bias", "reshape"),
  (r"norm2\.weight", "norm_ffn/scale", "reshape"),
  (r"ffn\.gate\.0\.weight", "ffn/wi_0/kernel", "linear"),
  (r"ffn\.fc1\.weight", "ffn/wi_1/kernel", "linear"),
  (r"ffn\.fc2\.weight", "ffn/wo/kernel", "linear"),
)

# Keys of a full encoder-decoder checkpoint that the encoder does not use.
IGNORE = (r"decoder\..*", r"lm_head\..*")


def _layer_rules(prefix: str, table, scan_layers: bool):
  group, layer = ("layer", "layers/") if scan_layers else ("idx", "layers_{idx}/")
  return tuple(
    Rule(rf"{prefix}(?P<{group}>\d+)\.{src}", layer + dst, transform)
    for src, dst, transform in table
  )


def rules(scan_layers: bool = True) -> tuple[Rule, ...]:
  """transformers UMT5EncoderModel names -> params (shared and encoder embeddings are tied)."""
  return (
    Rule(r"shared\.weight", "token_embedding"),
    Rule(r"encoder\.embed_tokens\.weight", "token_embedding"),
    *_layer_rules(r"encoder\.block\.", _HF_LAYER, scan_layers),
    Rule(r"encoder\.final_layer_norm\.weight", "norm_out/scale"),
  )


def wan_rules(scan_layers: bool = True) -> tuple[Rule, ...]:
  """Wan's own T5 encoder names (`token_embedding`, `blocks.N.*`, `norm`) -> params."""
  return (
    Rule(r"token_embedding\.weight", "token_embedding"),
    *_layer_rules(r"blocks\.", _WAN_LAYER, scan_layers),
    Rule(r"norm\.weight", "norm_out/scale"),
  )


RULES = rules()
WAN_RULES = wan_rules()
