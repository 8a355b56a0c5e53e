"""Key map: diffusers `WanTransformer3DModel` names -> our WanDiT params (scanned blocks)."""

from holocine_jax.weights.keymap import Rule

_B = r"blocks\.(?P<layer>\d+)\."
_ATTN = {"attn1": "self_attn", "attn2": "cross_attn"}
_PROJ = {"to_q": "q", "to_k": "k", "to_v": "v", r"to_out\.0": "o"}

RULES = (
  Rule(r"patch_embedding\.weight", "patch_embedding/kernel", "conv"),
  Rule(r"patch_embedding\.bias", "patch_embedding/bias"),
  Rule(r"condition_embedder\.time_embedder\.linear_1\.weight", "time_embedding_1/kernel", "linear"),
  Rule(r"condition_embedder\.time_embedder\.linear_1\.bias", "time_embedding_1/bias"),
  Rule(r"condition_embedder\.time_embedder\.linear_2\.weight", "time_embedding_2/kernel", "linear"),
  Rule(r"condition_embedder\.time_embedder\.linear_2\.bias", "time_embedding_2/bias"),
  Rule(r"condition_embedder\.time_proj\.weight", "time_projection/kernel", "linear"),
  Rule(r"condition_embedder\.time_proj\.bias", "time_projection/bias"),
  Rule(r"condition_embedder\.text_embedder\.linear_1\.weight", "text_embedding_1/kernel", "linear"),
  Rule(r"condition_embedder\.text_embedder\.linear_1\.bias", "text_embedding_1/bias"),
  Rule(r"condition_embedder\.text_embedder\.linear_2\.weight", "text_embedding_2/kernel", "linear"),
  Rule(r"condition_embedder\.text_embedder\.linear_2\.bias", "text_embedding_2/bias"),
  *(
    Rule(rf"{_B}{src}\.{proj}\.weight", f"blocks/{dst}/{ours}/kernel", "linear")
    for src, dst in _ATTN.items()
    for proj, ours in _PROJ.items()
  ),
  *(
    Rule(rf"{_B}{src}\.{proj}\.bias", f"blocks/{dst}/{ours}/bias")
    for src, dst in _ATTN.items()
    for proj, ours in _PROJ.items()
  ),
  *(
    Rule(rf"{_B}{src}\.norm_{qk}\.weight", f"blocks/{dst}/norm_{qk}/scale")
    for src, dst in _ATTN.items()
    for qk in "qk"
  ),
  Rule(rf"{_B}norm2\.weight", "blocks/norm_cross/scale"),
  Rule(rf"{_B}norm2\.bias", "blocks/norm_cross/bias"),
  Rule(rf"{_B}ffn\.net\.0\.proj\.weight", "blocks/ffn_in/kernel", "linear"),
  Rule(rf"{_B}ffn\.net\.0\.proj\.bias", "blocks/ffn_in/bias"),
  Rule(rf"{_B}ffn\.net\.2\.weight", "blocks/ffn_out/kernel", "linear"),
  Rule(rf"{_B}ffn\.net\.2\.bias", "blocks/ffn_out/bias"),
  Rule(rf"{_B}scale_shift_table", "blocks/modulation"),
  Rule(r"scale_shift_table", "head_modulation"),
  Rule(r"proj_out\.weight", "head/kernel", "linear"),
  Rule(r"proj_out\.bias", "head/bias"),
)
