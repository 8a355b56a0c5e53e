"""Wan2.2-T2V-A14B expert (each of the high- and low-noise experts) with HoloCine switches.

  get_config("")                    # full self-attention + window cross-attention (HoloCine full)
  get_config("attention=sparse")    # HoloCine sparse inter-shot self-attention
  get_config("window=false")        # plain Wan2.2 cross-attention
  get_config("expert=low,data_dir=gs://bucket/holocine_shots")   # train the low-noise expert
Defaults: bf16 compute, fp32 params, scanned blocks, FSDP over all devices.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(
    arg,
    attention="full",
    window=True,
    remat="dots_no_batch",
    param_dtype="float32",
    fsdp=-1,
    tensor=1,
    context=1,
    impl="auto",
    expert="high",
    batch=64,
    steps=10000,
    lr=1e-5,
    data_dir="",
  )
  config = ml_collections.ConfigDict()
  config.model = dict(
    dim=5120,
    num_layers=40,
    num_heads=40,
    ffn_dim=13824,
    freq_dim=256,
    text_dim=4096,
    in_channels=16,
    out_channels=16,
    patch_size=(1, 2, 2),
    eps=1e-6,
    rope_theta=10000.0,
    rope_max_positions=1024,
    block_q=512,
    block_kv=512,
    param_dtype=a.param_dtype,
    dtype="bfloat16",
    scan_layers=True,
    **common.holocine_switches(a),
  )
  config.text_len = 512
  config.boundary = 0.875  # high-noise expert for t >= boundary * 1000
  config.mesh = common.mesh(fsdp=a.fsdp, tensor=a.tensor, context=a.context)
  config.logical_rules = common.logical_rules()
  config.data = ml_collections.ConfigDict(
    dict(
      source="tfds",  # written by holocine_jax.training.preprocess
      data_dir=a.data_dir,
      split="train",
      num_samples=0,  # synthetic only
      frame_choices=(241,),  # synthetic only
      latent_height=60,  # 480 x 832 video
      latent_width=104,
      max_shots=13,  # the paper trains up to 13 shots; fixed per job
      max_shot_frames=61,
      text_len=512,
      seed=0,
      num_threads=8,
      prefetch=4,
    )
  )
  config.train = ml_collections.ConfigDict(
    dict(
      seed=0,
      num_steps=a.steps,
      global_batch=a.batch,
      learning_rate=a.lr,  # peak, after linear warmup
      warmup_steps=200,
      decay="cosine",  # "cosine" | "constant"
      end_lr_ratio=0.1,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      weight_decay=0.01,
      clip_norm=1.0,
      timestep_shift=5.0,  # training sigmas s' = shift s / (1 + (shift - 1) s)
      expert=a.expert,  # "high": t >= boundary*1000, "low": below, "all": one model for every t
      boundary=config.boundary,  # Wan2.2 expert switch
      log_every=10,
      checkpoint_every=500,
      keep_checkpoints=3,
      async_checkpoint=True,
      tensorboard=True,
      progress_bar=True,
    )
  )
  config.distributed = ml_collections.ConfigDict(
    dict(initialize=True, coordinator_address="", num_processes=0, process_id=-1)
  )
  return config
