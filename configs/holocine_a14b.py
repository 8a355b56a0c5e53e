"""HoloCine on Wan2.2-T2V-A14B: the released full / sparse experts, sampled as HoloCine does.

  python -m holocine_jax.convert --src checkpoints/ --format holocine --out /data/holocine_full
  python -m holocine_jax.sample --config configs/holocine_a14b.py --checkpoint /data/holocine_full \
      --tokenizer checkpoints/google/umt5-xxl --scenes scenes.jsonl --out out/
  get_config("attention=sparse")   # the sparse variant (sparse_*_noise.safetensors)
Sampling: flow Euler, shift 5, 50 steps, CFG 5, 480x832, 15 fps, window cross-attention on.
"""

import ml_collections

from configs import common, wan22_t2v_a14b


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = wan22_t2v_a14b.get_config(arg)
  config.sampler = common.sampler()
  config.sample = ml_collections.ConfigDict(
    dict(
      height=480,
      width=832,
      fps=15,
      seed=0,
      negative_prompt=common.WAN_NEGATIVE_PROMPT,
      text_encoder="umt5",
      tokenizer="",  # folder with tokenizer.json or spiece.model (or pass --tokenizer)
      text_len=512,
      decoder="vae",
      swap_experts=False,  # True: load each expert just before its stage (one in memory)
      max_shots=13,  # the paper trains up to 13 shots
      max_shot_frames=0,  # 0: per batch, the longest shot rounded up to 4 latent frames
    )
  )
  return config
