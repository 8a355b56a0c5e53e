"""Key map: original Wan VAE names (`Wan2.1_VAE.pth`, Wan's / HoloCine's `WanVAE_`) -> our params.

Facts (diffusers' convert_wan_to_diffusers.py and HoloCine's wan_video_vae.py): `conv1`/`conv2`
are quant_conv/post_quant_conv; `{encoder,decoder}.conv1` is conv_in; `head.0` (RMS norm) and
`head.2` are norm_out and conv_out; `middle.{0,1,2}` = res, attention, res; a residual block is
`residual.{0: norm1, 2: conv1, 3: norm2, 6: conv2}` + `shortcut`. `encoder.downsamples.k` has the
flat index k of our `down_k`; `decoder.upsamples.k` is flat too: level k // (n+2) holds n+1
residual blocks then one Resample (`resample.1` spatial conv, `time_conv`), so its rules are
generated per index for `num_res_blocks` n and the number of levels.
"""

from holocine_jax.weights.keymap import Rule

_RES = (
  # (original suffix, our suffix, transform)
  (r"residual\.0\.gamma", "norm1/scale", "reshape"),
  (r"residual\.2\.weight", "conv1/kernel", "conv"),
  (r"residual\.2\.bias", "conv1/bias", "reshape"),
  (r"residual\.3\.gamma", "norm2/scale", "reshape"),
  (r"residual\.6\.weight", "conv2/kernel", "conv"),
  (r"residual\.6\.bias", "conv2/bias", "reshape"),
  (r"shortcut\.weight", "shortcut/kernel", "conv"),
  (r"shortcut\.bias", "shortcut/bias", "reshape"),
)
_RESAMPLE = (
  (r"resample\.1\.weight", "spatial/kernel", "conv"),
  (r"resample\.1\.bias", "spatial/bias", "reshape"),
  (r"time_conv\.weight", "time/kernel", "conv"),
  (r"time_conv\.bias", "time/bias", "reshape"),
)
_ATTN = (
  (r"norm\.gamma", "norm/scale", "reshape"),
  (r"to_qkv\.weight", "qkv/kernel", "conv"),
  (r"to_qkv\.bias", "qkv/bias", "reshape"),
  (r"proj\.weight", "proj/kernel", "conv"),
  (r"proj\.bias", "proj/bias", "reshape"),
)
_CONV = ((r"weight", "kernel", "conv"), (r"bias", "bias", "reshape"))

_PART = r"(?P<part>encoder|decoder)"
_MODULES = (
  # (original module regex, our module path, suffix table)
  (r"conv1", "quant_conv", _CONV),
  (r"conv2", "post_quant_conv", _CONV),
  (rf"{_PART}\.conv1", "{part}/conv_in", _CONV),
  (rf"{_PART}\.head\.2", "{part}/conv_out", _CONV),
  (rf"{_PART}\.middle\.0", "{part}/mid/res_0", _RES),
  (rf"{_PART}\.middle\.1", "{part}/mid/attn", _ATTN),
  (rf"{_PART}\.middle\.2", "{part}/mid/res_1", _RES),
  (r"encoder\.downsamples\.(?P<k>\d+)", "encoder/down_{k}", _RES + _RESAMPLE),
)


def _module(src: str, dst: str, table) -> tuple[Rule, ...]:
  return tuple(Rule(rf"{src}\.{s}", f"{dst}/{d}", t) for s, d, t in table)


def rules(num_res_blocks: int = 2, num_levels: int = 4) -> tuple[Rule, ...]:
  """Rules for a VAE with `num_res_blocks` per level and `num_levels` = len(dim_mult)."""
  per_level = num_res_blocks + 2
  decoder = []
  for i in range(num_levels):
    for j in range(num_res_blocks + 1):
      decoder += _module(
        rf"decoder\.upsamples\.{i * per_level + j}", f"decoder/up_{i}/res_{j}", _RES
      )
    if i != num_levels - 1:
      k = i * per_level + num_res_blocks + 1
      decoder += _module(rf"decoder\.upsamples\.{k}", f"decoder/up_{i}/resample", _RESAMPLE)
  return (
    *(rule for src, dst, table in _MODULES for rule in _module(src, dst, table)),
    Rule(rf"{_PART}\.head\.0\.gamma", "{part}/norm_out/scale"),
    *decoder,
  )


RULES = rules()
