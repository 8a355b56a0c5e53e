"""Key map: original Wan / HoloCine DiT names (`blocks.N.self_attn.q`, ...) -> WanDiT params.

HoloCine's released experts (`full_*_noise.safetensors`, `sparse_*`) and Wan2.2's own DiT shards
use these names. Note the swap against diffusers: the original `norm3` is the (affine)
cross-attention norm.
"""

from holocine_jax.weights.keymap import Rule

_B = r"blocks\.(?P<layer>\d+)\."
_ATTN = {"self_attn": "self_attn", "cross_attn": "cross_attn"}

RULES = (
  Rule(r"patch_embedding\.weight", "patch_embedding/kernel", "conv"),
  Rule(r"patch_embedding\.bias", "patch_embedding/bias"),
  Rule(r"time_embedding\.0\.weight", "time_embedding_1/kernel", "linear"),
  Rule(r"time_embedding\.0\.bias", "time_embedding_1/bias"),
  Rule(r"time_embedding\.2\.weight", "time_embedding_2/kernel", "linear"),
  Rule(r"time_embedding\.2\.bias", "time_embedding_2/bias"),
  Rule(r"time_projection\.1\.weight", "time_projection/kernel", "linear"),
  Rule(r"time_projection\.1\.bias", "time_projection/bias"),
  Rule(r"text_embedding\.0\.weight", "text_embedding_1/kernel", "linear"),
  Rule(r"text_embedding\.0\.bias", "text_embedding_1/bias"),
  Rule(r"text_embedding\.2\.weight", "text_embedding_2/kernel", "linear"),
  Rule(r"text_embedding\.2\.bias", "text_embedding_2/bias"),
  *(
    Rule(rf"{_B}{attn}\.(?P<proj>[qkvo])\.weight", f"blocks/{attn}/{{proj}}/kernel", "linear")
    for attn in _ATTN
  ),
  *(Rule(rf"{_B}{attn}\.(?P<proj>[qkvo])\.bias", f"blocks/{attn}/{{proj}}/bias") for attn in _ATTN),
  *(
    Rule(rf"{_B}{attn}\.norm_(?P<qk>[qk])\.weight", f"blocks/{attn}/norm_{{qk}}/scale")
    for attn in _ATTN
  ),
  Rule(rf"{_B}norm3\.weight", "blocks/norm_cross/scale"),
  Rule(rf"{_B}norm3\.bias", "blocks/norm_cross/bias"),
  Rule(rf"{_B}ffn\.0\.weight", "blocks/ffn_in/kernel", "linear"),
  Rule(rf"{_B}ffn\.0\.bias", "blocks/ffn_in/bias"),
  Rule(rf"{_B}ffn\.2\.weight", "blocks/ffn_out/kernel", "linear"),
  Rule(rf"{_B}ffn\.2\.bias", "blocks/ffn_out/bias"),
  Rule(rf"{_B}modulation", "blocks/modulation"),
  Rule(r"head\.modulation", "head_modulation"),
  Rule(r"head\.head\.weight", "head/kernel", "linear"),
  Rule(r"head\.head\.bias", "head/bias"),
)
