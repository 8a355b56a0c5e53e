"""The jitted function of each plannable job, with abstract sharded arguments on a mesh.

Every builder runs the code its job runs: `training/step.py`'s train step on the abstract
`TrainState` of `training/state.py` (with LoRA: adapters in the state, the frozen base apart),
the sampler's per-expert stage (CFG rows, or the positive rows alone at guidance 1) on bf16
expert params (a LoRA merged) in the shardings `store.load` restores them to, the sampling
job's VAE decode and umT5 encode, or preprocessing's VAE encode (`data/encoders.video_encoder`)
and umT5 encode. Arguments are `jax.ShapeDtypeStruct`s carrying NamedShardings; the only
concrete arrays are the scene's small ShotBatch, built on the host. Nothing runs on the mesh's
devices.
Legend: B rows, F/H/W latent grid, C latent channels, T text tokens, E text dim, Z VAE latents.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from holocine_jax import layout, sample, sharding, toy_text
from holocine_jax.attention import shot_kernel
from holocine_jax.data import encoders
from holocine_jax.model import lora, umt5
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT
from holocine_jax.planning import memory
from holocine_jax.sampling import generator
from holocine_jax.sampling.pipeline import Sampler, SamplerConfig
from holocine_jax.scene import Scene
from holocine_jax.training import global_batch, records, state
from holocine_jax.training import loss as loss_lib
from holocine_jax.training import step as step_lib
from holocine_jax.weights import formats, store

JOBS = ("sample", "train", "vae", "text")
ENCODER_JOBS = ("vae", "text")
PURPOSES = ("sample", "preprocess")


@dataclasses.dataclass(frozen=True)
class Request:
  """A job on one scene: `batch` counts scenes (sample, vae, text) or the global batch (train;
  0 takes the config's). `purpose` preprocess plans the encoder jobs as `training.preprocess`
  runs them (vae: encode uint8 frames; text: scene prompts without a negative one)."""

  job: str
  frames: int = 241
  height: int = 480
  width: int = 832
  shots: int = 5
  batch: int = 0
  purpose: str = "sample"

  def __post_init__(self):
    if self.job not in JOBS:
      raise ValueError(f"unknown job {self.job!r}; expected one of {JOBS}")
    if self.purpose not in PURPOSES:
      raise ValueError(f"unknown purpose {self.purpose!r}; expected one of {PURPOSES}")
    if self.purpose == "preprocess" and self.job not in ENCODER_JOBS:
      raise ValueError(f"purpose 'preprocess' plans {ENCODER_JOBS}, not job {self.job!r}")
    _scene(self)  # SceneError naming the problem (e.g. more shots than frames)


@dataclasses.dataclass
class Program:
  """A jitted function, abstract arguments for it, facts about its input, and the per-chip
  bytes its job keeps on the chips beside it."""

  jitted: Any
  args: tuple
  num_layers: int | None
  facts: dict
  resident: int = 0


def rows(config, request: Request, batch_shards: int) -> int:
  """Batch rows the job runs: scenes padded to whole batch shards as the jobs pad them; x2 for
  the sampler's CFG (unless every expert samples at guidance 1), +1 negative prompt for the
  sampler's text encoder."""
  pad = lambda n: -(-n // batch_shards) * batch_shards
  if request.job == "train":
    return request.batch or config.train.global_batch
  scenes = request.batch or 1
  if request.job == "sample":
    return pad(scenes) * _sampler_config(config).rows_per_scene
  negative = int(request.job == "text" and request.purpose == "sample")
  return pad(scenes + negative)


def _sampler_config(config) -> SamplerConfig:
  return SamplerConfig.from_config(config.sampler) if "sampler" in config else SamplerConfig()


def text_len(config, request: Request) -> int:
  """Prompt tokens the text job encodes: the sampler's, or preprocessing's (the records')."""
  if request.purpose == "preprocess":
    return config.data.text_len
  return config.sample.text_len if "sample" in config else config.text_len


def full_depth(config, request: Request) -> int | None:
  """Layers the job compiles at full depth (None: the VAE has no layer stack)."""
  if request.job == "vae":
    return None
  if request.job == "text":
    return formats.model_config("umt5", config).num_layers
  return config.model.num_layers


def token_count(config, request: Request) -> int:
  """Video tokens of the request's scene in the DiT."""
  return _grid(request, tuple(config.model.patch_size)).num_tokens


def build(config, request: Request, mesh, num_layers: int | None = None) -> Program:
  """The job's jitted function on `mesh`; `num_layers` overrides the depth (DiT, umT5)."""
  rules = sharding.logical_rules(config.logical_rules)
  b = rows(config, request, sharding.batch_shards(mesh, rules))
  builder = {"sample": _sample, "train": _train, "vae": _vae, "text": _text}[request.job]
  program = builder(config, request, mesh, rules, b, num_layers)
  program.facts = dict(rows=b, **program.facts)
  if request.purpose == "preprocess":  # both encoders load once: each runs beside the other
    other = {"vae": "umt5", "text": "vae"}[request.job]
    params = store.target(other, formats.model_config(other, config), mesh, rules)
    program.resident = memory.argument_bytes(params)
  return program


def _abstract(tree, shardings):
  """ShapeDtypeStructs of `tree` placed by a matching tree of shardings, or one for every leaf."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def _depth(model_config, num_layers):
  return (
    model_config if num_layers is None else dataclasses.replace(model_config, num_layers=num_layers)
  )


def _scene(request: Request):
  return Scene.create("plan", [f"shot {i}" for i in range(request.shots)], request.frames)


def _grid(request: Request, patch=(1, 2, 2)) -> layout.LatentGrid:
  """The latent grid of the request's video (frames snapped to 4t+1)."""
  s = generator.VAE_SPACE_STRIDE
  frames = _scene(request).num_latent_frames
  return layout.LatentGrid(frames, request.height // s, request.width // s, patch)


def _record(request: Request, model_config: DiTConfig):
  """(latent grid, shot layout, training record) of the request's scene, evenly cut, with the
  toy text embedding's prompt and windows (only shapes matter here)."""
  scene = _scene(request)
  grid = _grid(request, model_config.patch_size)
  context_NxE, ranges = toy_text.toy_text_embedding(scene.prompt(), model_config.text_dim)
  lay = layout.ShotLayout.from_scene(scene, grid)
  record = dict(
    latents=np.zeros((grid.frames, grid.height, grid.width, model_config.in_channels), np.float32),
    context=context_NxE.astype(np.float32),
    latent_bounds=np.asarray(lay.latent_bounds, np.int32),
    text_ranges=ranges,
  )
  return grid, lay, record


def _shot_bound(fixed: int, lay: layout.ShotLayout, grid: layout.LatentGrid) -> int:
  """The job's static shot bound: the config's fixed one, or (0) as both jobs derive it from
  their data, the longest shot rounded."""
  return fixed or layout.round_shot_bound(max(lay.latent_frames_per_shot()), grid.frames)


def _shot_facts(shots: layout.ShotBatch, model_config: DiTConfig) -> dict:
  """The static shot bound and the kernel's kv blocks: visited, and what dense attention visits."""
  attended = shots
  if model_config.self_attention == "full":
    attended = layout.dense_batch(*shots.shot_id_BxL.shape)
  blocks = shot_kernel.BlockSizes(model_config.block_q, model_config.block_kv)
  visited, dense = shot_kernel.visited_blocks(attended, blocks)
  return dict(
    tokens=int(shots.shot_id_BxL.shape[1]),
    shot_bound_frames=shots.max_shot_frames,
    kv_blocks_visited=visited,
    kv_blocks_dense=dense,
  )


def _sample(config, request, mesh, rules, b, num_layers):
  """One expert's denoising stage (Sampler.stage) over its widest batch: with CFG, the scenes'
  positive rows then as many negative rows; at guidance 1 for both experts, the scenes only."""
  dit_config = lora.plain_config(formats.model_config("dit", config, "bfloat16"))
  model_config = _depth(dit_config, num_layers)  # a LoRA samples merged into its base
  sampler_config = _sampler_config(config)
  sampler = Sampler(WanDiT(model_config), sampler_config)
  blocks = config.sample if "sample" in config else config.data
  grid, lay, record = _record(request, model_config)
  scenes = b // sampler_config.rows_per_scene
  shots = layout.make_batch(
    [lay] * b,
    [layout.TextWindows.from_ranges(record["text_ranges"])] * scenes + [None] * (b - scenes),
    max_shots=blocks.max_shots,
    max_shot_frames=_shot_bound(blocks.max_shot_frames, lay, grid),
    text_len=blocks.text_len,
  )
  batch = NamedSharding(mesh, P(sharding.batch_axes(rules)))
  replicated = NamedSharding(mesh, P())
  noise = jax.ShapeDtypeStruct(
    (scenes, grid.frames, grid.height, grid.width, model_config.in_channels), jnp.float32
  )
  latents = jax.eval_shape(sampler.schedule.init, noise)
  text_dtype = jnp.bfloat16  # what umT5 returns
  context = jax.ShapeDtypeStruct((b, blocks.text_len, model_config.text_dim), text_dtype)
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=replicated)
  args = (
    {"params": store.target("dit", model_config, mesh, rules)},
    _abstract(sampler.schedule, replicated),
    _abstract(latents, batch),
    _abstract(context, batch),
    _abstract(shots, batch),
    scalar(jnp.int32),  # start, stop, guidance
    scalar(jnp.int32),
    scalar(jnp.float32),
  )
  guidance = dict(high=sampler_config.guidance_high, low=sampler_config.guidance_low)
  facts = dict(_shot_facts(shots, model_config), guidance=guidance)
  return Program(sampler.stage, args, model_config.num_layers, facts)


def _train(config, request, mesh, rules, b, num_layers):
  """The train step (loss, grads, AdamW) on the abstract TrainState and a global batch; with
  LoRA the state holds the adapters only and the frozen base is its own (not donated) argument."""
  train = config.train
  model = WanDiT(_depth(DiTConfig.from_config(config.model), num_layers))
  tx, schedule = state.optimizer(train)
  key = jax.random.key(train.seed)  # on the host: no eager op may run under the mesh
  with sharding.activate(mesh, rules):
    boxed = jax.eval_shape(state.init_fn(model, tx), key)
  state_shardings = meta.unbox(sharding.shardings_for(boxed, mesh, rules))
  base, base_shardings = state.base_abstract(model, mesh, rules)
  grid, lay, record = _record(request, model.config)
  one = records.collate(
    [record],
    patch=model.config.patch_size,
    max_shots=config.data.max_shots,
    max_shot_frames=_shot_bound(config.data.max_shot_frames, lay, grid),
    text_len=config.data.text_len,
  )
  host_batch = {  # b copies of the collated record (views: nothing of batch size is allocated)
    k: jax.tree.map(lambda x: np.broadcast_to(x, (b, *x.shape[1:])), one[k])
    for k in global_batch.MODEL_INPUTS
  }
  batch_shardings = global_batch.shardings(host_batch, mesh, rules)
  step = step_lib.make_train_step(
    model,
    tx,
    schedule,
    loss_lib.FlowMatching.from_config(train),
    seed=train.seed,
    mesh=mesh,
    rules=rules,
    state_shardings=state_shardings,
    batch_shardings=batch_shardings,
    base_shardings=base_shardings,
    microbatches=train.get("microbatches", 1),
  )
  args = (
    _abstract(meta.unbox(boxed), state_shardings),
    _abstract(base, base_shardings),  # a LoRA step's frozen base ({}: a full fine-tune)
    _abstract(host_batch, batch_shardings),
  )
  c = model.config
  lora_facts = dict(rank=c.lora_rank, base=c.lora_base) if c.lora_rank else None
  facts = dict(
    _shot_facts(host_batch["shots"], c), lora=lora_facts, microbatches=train.get("microbatches", 1)
  )
  return Program(step.jitted, args, c.num_layers, facts)


def _vae(config, request, mesh, rules, b, num_layers):
  """The sampling job's decode (final latents -> uint8 video) or preprocessing's encode (uint8
  frames -> latents)."""
  del num_layers  # the VAE has no layer stack to shorten
  vae_config = formats.model_config("vae", config)
  batch = NamedSharding(mesh, P(sharding.batch_axes(rules)))
  params = store.target("vae", vae_config, mesh, rules)
  if request.purpose == "preprocess":
    frames = _scene(request).num_frames
    video = jax.ShapeDtypeStruct(
      (b, frames, request.height, request.width, 3), jnp.uint8, sharding=batch
    )
    return Program(encoders.video_encoder(vae_config), (params, video), None, dict(frames=frames))
  grid = _grid(request)
  latents = jax.ShapeDtypeStruct(
    (b, grid.frames, grid.height, grid.width, vae_config.z_dim), jnp.float32, sharding=batch
  )
  return Program(sample.vae_decoder(vae_config), (params, latents), None, {})


def _text(config, request, mesh, rules, b, num_layers):
  """The umT5 encoder over b prompts of the job's text length: the sampler's (scenes + the
  negative) or, preprocessing, the training records' (scenes)."""
  text_config = _depth(formats.model_config("umt5", config), num_layers)
  params = store.target("umt5", text_config, mesh, rules)
  shardings = jax.tree.map(lambda x: x.sharding, params)
  encode = umt5.make_encode_fn(text_config, mesh, rules, shardings)
  tokens = NamedSharding(mesh, P(sharding.batch_axes(rules)))
  length = text_len(config, request)
  args = (
    params,
    jax.ShapeDtypeStruct((b, length), jnp.int32, sharding=tokens),
    jax.ShapeDtypeStruct((b, length), jnp.bool_, sharding=tokens),
  )
  return Program(encode.jitted, args, text_config.num_layers, dict(tokens=length))
