"""HoloCine on Wan2.2-T2V-A14B: the released full / sparse experts, sampled as HoloCine does.

  python -m holocine_jax.convert --src checkpoints/ --format holocine --out /data/holocine_full
  python -m holocine_jax.sample --config configs/holocine_a14b.py --checkpoint /data/holocine_full \
      --tokenizer checkpoints/google/umt5-xxl --scenes scenes.jsonl --out out/
  get_config("attention=sparse")   # the sparse variant (sparse_*_noise.safetensors)
  get_config("distill=4")          # the sampler step-distilled Wan2.2 LoRAs are trained for
Sampling: flow Euler, shift 5, 50 steps, CFG 5, 480x832, 15 fps, window cross-attention on.

`distill=4`: lightx2v's 4-step Wan2.2-T2V-A14B distillation (Wan2.2-Lightning LoRAs, rank 64,
one per expert; load them with `sample --lora high=...:1 --lora low=...:1`): flow Euler at the
unshifted timesteps [1000, 750, 500, 250], shift 5 (fed t = 1000, 937.5, 833.3, 625), guidance 1
for both experts (no negative prompt pass), boundary 0.875 (2 high-noise steps, 2 low-noise).
Sources: github.com/ModelTC/Wan2.2-Lightning `wan/configs/wan_t2v_A14B.py` (sample_steps 4,
sample_shift 5.0, sample_guide_scale (1.0, 1.0), boundary 0.875), its `generate.py` (solver
'euler': "used in distillation") and `wan/utils/fm_solvers_euler.py` (timesteps
linspace(1000, 0, steps + 1), shifted); ModelTC/LightX2V `configs/wan22/wan_moe_t2v_distill_lora.json`
(infer_steps 4, denoising_step_list [1000, 750, 500, 250], sample_shift 5.0, enable_cfg false,
boundary_step_index 2, wan2.2_t2v_A14b_{high,low}_noise_lora_rank64_lightx2v_4step) and
`lightx2v/models/schedulers/wan/step_distill/scheduler.py` (Euler through that list). Neither
publishes another step count for T2V A14B.
"""

import ml_collections

from configs import common, wan22_t2v_a14b

# Step-distilled samplers by step count (see the docstring for the sources).
DISTILL = {
  4: dict(
    scheduler="euler",
    num_steps=4,
    timesteps=(1000.0, 750.0, 500.0, 250.0),
    shift=5.0,
    guidance_high=1.0,
    guidance_low=1.0,
  ),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  items = [item for item in (arg or "").split(",") if item]
  own = [item for item in items if item.partition("=")[0] == "distill"]
  a = common.parse_arg(",".join(own), distill=0)
  if a.distill and a.distill not in DISTILL:
    raise ValueError(f"distill={a.distill}: known step counts {sorted(DISTILL)} (0: off)")
  config = wan22_t2v_a14b.get_config(",".join(item for item in items if item not in own))
  config.sampler = common.sampler(**DISTILL.get(a.distill, {}))
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
