"""Wan2.2-T2V-A14B expert (each of the high- and low-noise experts) with HoloCine switches.

  get_config("")                    # full self-attention + window cross-attention (HoloCine full)
  get_config("attention=sparse")    # HoloCine sparse inter-shot self-attention
  get_config("window=false")        # plain Wan2.2 cross-attention
  get_config("expert=low,data_dir=gs://bucket/holocine_shots")   # train the low-noise expert
  get_config("lora=64")             # LoRA rank 64 on a frozen bf16 base (adapters fp32)
  get_config("lora=64,lora_base=int8")   # QLoRA: the frozen base int8 (or nf4)
  configs/holocine_a14b.py:attention=sparse,lora=64,lora_base=int8   # the same on HoloCine
  get_config("micro=4,context=4,params_over_context=true")   # 4 sequential microbatches per
      # step, each scene's tokens split 4 ways, params sharded over fsdp x context
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
    micro=1,  # train.microbatches
    params_over_context=False,  # shard the params' model dim over fsdp x context
    **common.LORA_ARGS,
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
  config.logical_rules = common.logical_rules(a.params_over_context)
  config.data = common.data(data_dir=a.data_dir)
  config.train = common.train(
    num_steps=a.steps,
    global_batch=a.batch,
    microbatches=a.micro,
    learning_rate=a.lr,
    expert=a.expert,
    boundary=config.boundary,
  )
  config.distributed = common.distributed(initialize=True)
  return config
