"""Key map: diffusers `AutoencoderKLWan` (Wan2.1, is_residual=False) names -> our WanVAE params.

Encoder `down_blocks.k` keep diffusers' flat index k (ResBlocks and Resamples interleaved), so the
rules hold for any num_res_blocks / dim_mult. RMS-norm gammas ([C, 1, 1(, 1)]) reshape to [C];
the attention's 1x1 Conv2d weights become [C, 3C] / [C, C] matrices.
"""

from holocine_jax.weights.keymap import Rule

_CONVS = {"conv1": "conv1", "conv2": "conv2", "conv_shortcut": "shortcut"}

_PREFIXES = (
  # (diffusers module regex, our module path)
  (r"(?P<part>encoder|decoder)\.conv_in", "{part}/conv_in"),
  (r"(?P<part>encoder|decoder)\.conv_out", "{part}/conv_out"),
  (r"encoder\.down_blocks\.(?P<k>\d+)\.time_conv", "encoder/down_{k}/time"),
  (r"encoder\.down_blocks\.(?P<k>\d+)\.resample\.1", "encoder/down_{k}/spatial"),
  (r"decoder\.up_blocks\.(?P<i>\d+)\.upsamplers\.0\.time_conv", "decoder/up_{i}/resample/time"),
  (
    r"decoder\.up_blocks\.(?P<i>\d+)\.upsamplers\.0\.resample\.1",
    "decoder/up_{i}/resample/spatial",
  ),
  (r"quant_conv", "quant_conv"),
  (r"post_quant_conv", "post_quant_conv"),
  (r"(?P<part>encoder|decoder)\.mid_block\.attentions\.0\.to_qkv", "{part}/mid/attn/qkv"),
  (r"(?P<part>encoder|decoder)\.mid_block\.attentions\.0\.proj", "{part}/mid/attn/proj"),
)

# ResBlocks: encoder.down_blocks.k, {encoder,decoder}.mid_block.resnets.j,
# decoder.up_blocks.i.resnets.j
_RESBLOCKS = (
  (r"encoder\.down_blocks\.(?P<k>\d+)", "encoder/down_{k}"),
  (r"(?P<part>encoder|decoder)\.mid_block\.resnets\.(?P<j>\d+)", "{part}/mid/res_{j}"),
  (r"decoder\.up_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)", "decoder/up_{i}/res_{j}"),
)

RULES = (
  *(Rule(rf"{src}\.weight", f"{dst}/kernel", "conv") for src, dst in _PREFIXES),
  *(Rule(rf"{src}\.bias", f"{dst}/bias") for src, dst in _PREFIXES),
  *(
    Rule(rf"{src}\.{conv}\.weight", f"{dst}/{ours}/kernel", "conv")
    for src, dst in _RESBLOCKS
    for conv, ours in _CONVS.items()
  ),
  *(
    Rule(rf"{src}\.{conv}\.bias", f"{dst}/{ours}/bias")
    for src, dst in _RESBLOCKS
    for conv, ours in _CONVS.items()
  ),
  *(
    Rule(rf"{src}\.{norm}\.gamma", f"{dst}/{norm}/scale")
    for src, dst in _RESBLOCKS
    for norm in ("norm1", "norm2")
  ),
  Rule(
    r"(?P<part>encoder|decoder)\.mid_block\.attentions\.0\.norm\.gamma",
    "{part}/mid/attn/norm/scale",
  ),
  Rule(r"(?P<part>encoder|decoder)\.norm_out\.gamma", "{part}/norm_out/scale"),
)
