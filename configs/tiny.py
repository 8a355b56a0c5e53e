"""Tiny DiT that runs on CPU in seconds: tests, smoke runs and CI.

python -m pytest tests            # uses get_config("")
get_config("attention=sparse")    # HoloCine sparse inter-shot self-attention
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(
    arg, attention="full", impl="auto", window=True, scan=True, remat="none", block=16
  )
  config = ml_collections.ConfigDict()
  config.model = dict(
    dim=32,
    num_layers=2,
    num_heads=2,
    ffn_dim=64,
    freq_dim=32,
    text_dim=24,
    in_channels=4,
    out_channels=4,
    patch_size=(1, 2, 2),
    eps=1e-6,
    rope_theta=10000.0,
    rope_max_positions=1024,
    self_attention=a.attention,
    attention_impl=a.impl,
    block_q=a.block,
    block_kv=a.block,
    window_cross_attention=a.window,
    param_dtype="float32",
    dtype="float32",
    scan_layers=a.scan,
    remat_policy=a.remat,
  )
  config.text_len = 16
  config.mesh = common.mesh()
  config.logical_rules = common.logical_rules()
  return config
