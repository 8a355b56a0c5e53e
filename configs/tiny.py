"""Tiny DiT that runs on CPU in seconds: tests, smoke runs and CI.

python -m pytest tests            # uses get_config("")
get_config("attention=sparse")    # HoloCine sparse inter-shot self-attention
get_config("lora=4,lora_base=nf4")   # LoRA rank 4 on a frozen nf4 base (QLoRA)
python -m holocine_jax.train --config configs/tiny.py --workdir /tmp/tiny   # synthetic data, CPU
python -m holocine_jax.train --config configs/tiny.py:attention=sparse,steps=400 --workdir /tmp/t2
python -m holocine_jax.train --config configs/tiny.py:size=wide,steps=4000 --workdir /tmp/toy
"""

import ml_collections

from configs import common

# DiT sizes. Toy task (evaluation/toy.py, 64 scenes) after 4000 steps, sampled with
# --set sampler.num_steps=30 --set sampler.guidance_high=2 --set sampler.guidance_low=2:
# "tiny" colour 0.75, shape 0.49 (chance 1/3); "wide" colour 0.90, shape 0.66 (about 7 min on
# 2 shared CPU cores; 0.78 / 0.55 with the default 8 steps at guidance 5). Neither learns
# motion (chance 1/5): shapes are drawn in fragments that jump between frames.
SIZES = {
  "tiny": dict(dim=32, num_layers=2, num_heads=2, ffn_dim=64),
  "wide": dict(dim=64, num_layers=4, num_heads=4, ffn_dim=128),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(
    arg,
    attention="full",
    impl="auto",
    window=True,
    scan=True,
    remat="none",
    block=16,
    steps=200,
    batch=8,
    lr=2e-3,
    expert="all",
    samples=2048,
    ckpt_every=100,
    size="tiny",
    **common.LORA_ARGS,
  )
  if a.size not in SIZES:
    raise ValueError(f"size={a.size!r} is not one of {sorted(SIZES)}")
  config = ml_collections.ConfigDict()
  config.model = dict(
    **SIZES[a.size],
    freq_dim=32,
    text_dim=24,
    in_channels=4,
    out_channels=4,
    patch_size=(1, 2, 2),
    eps=1e-6,
    rope_theta=10000.0,
    rope_max_positions=1024,
    block_q=a.block,
    block_kv=a.block,
    param_dtype="float32",
    dtype="float32",
    **common.holocine_switches(a),
    scan_layers=a.scan,
  )
  config.text_len = 16
  config.mesh = common.mesh()
  config.logical_rules = common.logical_rules()
  config.data = common.data(
    source="synthetic",
    num_samples=a.samples,
    frame_choices=(13, 17),  # 4 or 5 latent frames -> two shape buckets
    latent_height=8,
    latent_width=8,
    max_shots=3,
    max_shot_frames=5,
    text_len=32,
    num_threads=2,
  )
  config.train = common.train(
    num_steps=a.steps,
    global_batch=a.batch,
    learning_rate=a.lr,
    warmup_steps=20,
    expert=a.expert,
    checkpoint_every=a.ckpt_every,
  )
  config.distributed = common.distributed(initialize=False)
  config.sampler = common.sampler(num_steps=8)
  config.sample = ml_collections.ConfigDict(
    dict(
      height=64,  # 8x8 latents, as the synthetic training data
      width=64,
      fps=15,
      seed=0,
      negative_prompt="blurry, static",
      text_encoder="toy",  # the synthetic data's word embedding: no tokenizer or weights
      tokenizer="",
      text_len=32,
      decoder="latent_rgb",  # synthetic latents are drawn in latent space: preview, no VAE
      swap_experts=False,  # True: load each expert just before its stage (one in memory)
      max_shots=3,
      max_shot_frames=0,  # 0: per batch, the longest shot rounded up to 4 latent frames
    )
  )
  return config
