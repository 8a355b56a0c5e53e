"""Pieces every config shares: the mesh block and the logical sharding rules."""

import ml_collections

from holocine_jax import config_file, sharding
from holocine_jax.model.config import BLOCK_LINEARS


def mesh(**sizes) -> ml_collections.ConfigDict:
  """Mesh sizes over (data, fsdp, context, tensor); -1 takes the remaining devices."""
  base = dict(data=1, fsdp=-1, context=1, tensor=1)
  base.update(sizes)
  return ml_collections.ConfigDict(base)


def logical_rules(params_over_context: bool = False):
  """The rules table; `params_over_context` shards the params' model dim over fsdp x context
  (context-parallel training then keeps 1/(fsdp*context) of the params and optimizer per chip)."""
  rules = [list(rule) for rule in sharding.DEFAULT_LOGICAL_RULES]
  if params_over_context:
    rules = [[name, ["fsdp", "context"] if name == "embed" else axes] for name, axes in rules]
  return rules


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'key=value,key2=value2' overrides on typed defaults (big_vision's arg convention)."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
    out[key] = config_file.parse_value(key, value, defaults[key])
  return out


# Config args every model config takes: LoRA rank (0: full fine-tune) and the frozen base's
# storage (bf16, or QLoRA's int8 / nf4); alpha defaults to the rank.
LORA_ARGS = dict(lora=0, lora_base="bf16")


def holocine_switches(a: ml_collections.ConfigDict) -> dict:
  """The model fields every config takes from its args: HoloCine attention, remat and LoRA."""
  return dict(
    self_attention=a.attention,
    attention_impl=a.impl,
    window_cross_attention=a.window,
    remat_policy=a.remat,
    lora_rank=a.lora,
    lora_alpha=0.0,  # the update is scaled by alpha / rank; 0: alpha = rank
    lora_targets=tuple(BLOCK_LINEARS),  # block modules; e.g. --set 'model.lora_targets=("ffn_in",)'
    lora_base=a.lora_base,
  )


# Wan's standard negative prompt (HoloCine samples with it too).
WAN_NEGATIVE_PROMPT = (
  "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
  "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
  "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


def sampler(**overrides) -> ml_collections.ConfigDict:
  """HoloCine's sampler: flow Euler, shift 5, 50 steps, CFG 5 on both experts."""
  base = dict(
    scheduler="euler",
    num_steps=50,
    shift=5.0,
    boundary=0.875,
    guidance_high=5.0,
    guidance_low=5.0,
  )
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def train(**overrides) -> ml_collections.ConfigDict:
  """Optimizer, flow-matching and checkpointing settings; configs override what differs."""
  base = dict(
    seed=0,
    num_steps=1000,
    global_batch=8,
    # sequential microbatches per step (gradients summed, one update): activations of
    # global_batch / microbatches examples at a time; each must split over data x fsdp
    microbatches=1,
    learning_rate=1e-5,  # peak, after linear warmup
    warmup_steps=200,
    decay="cosine",  # "cosine" | "constant"
    end_lr_ratio=0.1,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.01,
    clip_norm=1.0,
    timestep_shift=5.0,  # training sigmas s' = shift s / (1 + (shift - 1) s)
    expert="all",  # "high": t >= boundary*1000, "low": below, "all": one model for every t
    # Start from these weights instead of a random init: a converted folder or a training
    # workdir ("WORKDIR@STEP" for one of its steps); "": random init (training/init_from.py).
    init_from="",
    # The stored expert to start from: "" = train.expert's (needed with expert=all when the
    # folder holds both), "high" or "low".
    init_expert="",
    boundary=0.875,  # Wan2.2 expert switch
    log_every=10,
    checkpoint_every=500,
    keep_checkpoints=3,
    async_checkpoint=True,
    tensorboard=True,
    progress_bar=True,
    # Every this many steps (and at the last), sample scenes with the config's sample / sampler
    # blocks from the current params into workdir/samples/step_<N> and TensorBoard; 0: off.
    sample_every=0,
    sample_scenes="",  # sampling JSONL file; empty: built-in toy scenes (synthetic data only)
  )
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def data(**overrides) -> ml_collections.ConfigDict:
  """Training data: source, latent geometry, shape buckets, shot bounds, loader threads."""
  base = dict(
    source="tfds",  # "synthetic" | "tfds" (ArrayRecord written by training.preprocess)
    data_dir="",  # tfds: the preprocess --out folder
    split="train",
    num_samples=0,  # synthetic only
    frame_choices=(241,),  # synthetic only: video frame counts drawn per sample
    latent_height=60,  # 480 x 832 video
    latent_width=104,
    # Shape buckets in latent frames (video frames 4n-3: 21 = 81 frames, 61 = 241 frames). A clip
    # goes to the smallest bucket that holds it, padded at the end (padding masked in the loss
    # and attention); every global batch comes from one bucket: one compile per bucket.
    # (): one bucket per exact latent shape, no padding.
    buckets=(),
    max_shots=13,  # fixed per job: new cuts never recompile
    max_shot_frames=0,  # shot bound in latent frames; 0: per bucket, its longest shot rounded to 4
    text_len=512,
    seed=0,
    num_threads=8,
    prefetch=4,
  )
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def distributed(initialize: bool) -> ml_collections.ConfigDict:
  """jax.distributed settings (empty values: auto-detected on TPU VMs)."""
  return ml_collections.ConfigDict(
    dict(initialize=initialize, coordinator_address="", num_processes=0, process_id=-1)
  )
