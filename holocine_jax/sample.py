"""Batch offline sampling: a JSONL file of scenes in, one mp4 + JSON sidecar per scene out.

  python -m holocine_jax.sample --config configs/holocine_a14b.py:attention=sparse \
      --checkpoint /data/holocine_sparse --tokenizer /data/umt5-xxl --scenes scenes.jsonl --out out/
  python -m holocine_jax.sample --config configs/tiny.py --random_init --scenes s.jsonl --out out/
  python -m holocine_jax.sample --config configs/tiny.py --checkpoint /tmp/holocine_tiny \
      --scenes s.jsonl --out out/

`--checkpoint` is a directory written by `python -m holocine_jax.convert` (components `high`, `low`,
`text_encoder`, `vae`) or a training workdir (`python -m holocine_jax.train`: its newest step, or
`--step N`; only the params are restored, cast to the config's param_dtype as they are read,
straight into the sampling shardings; a model trained for one expert serves every step; the text
encoder and decoder are then `toy` / `latent_rgb`); weights/store.py tells the two apart. Its model
must have the config's architecture (one error names the fields that differ), and a workdir's model
the attention it was trained with (model.self_attention full / sparse,
model.window_cross_attention): sampling otherwise computes something else with the same params, so
it fails naming the `--set`s that sample as trained; `--allow_attention_change` samples with the
config's attention on purpose (e.g. a full-attention model with sparse attention).
`--lora [high=|low=]PATH[:SCALE]` (repeatable) merges a Wan LoRA file (diffusers/peft, original /
ComfyUI or musubi-tuner names; weights/lora_files.py) into both experts or the one named, at SCALE
(default 1), each expert's params donated to the merge (no second copy); the sidecars fingerprint
the files' contents and scales. The checks run before anything is loaded. Before the model is
built, `--out` is locked for this job (a second job on it fails) and every line is validated
completely (types and the model's limits); a bad line is reported with its line number and
skipped. Rerunning skips a finished scene only if nothing that determines its video changed
(request, model, sampler, decoder, weights and LoRAs; see `setup`), and generates a changed one
again. See sampling/requests.py for the line format. Exit
codes: 0 every scene done or skipped; 1 a bad line or a failed scene (the printed JSON summary lists
them); any other error (a config value, `--out`, the checkpoint) raises.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys

import jax

from holocine_jax import config_file, sharding, text, video
from holocine_jax.model import dit, vae
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT
from holocine_jax.sampling import generator, job, requests, text_backends
from holocine_jax.sampling.pipeline import SamplerConfig
from holocine_jax.weights import formats, lora_files, store

# request field -> the config key giving its default
_DEFAULT_KEYS = dict(
  seed="sample.seed",
  height="sample.height",
  width="sample.width",
  steps="sampler.num_steps",
  guidance="sampler.guidance_high / sampler.guidance_low",
  negative_prompt="sample.negative_prompt",
)
# model fields that change what a trained DiT computes without changing its params
ATTENTION_FIELDS = ("self_attention", "window_cross_attention")


def check_model(
  what: str,
  stored: DiTConfig,
  model: DiTConfig,
  fields=formats.DIT_SHAPE_FIELDS,
  fix: str = "sample with the config it was made with",
):
  """Raises ValueError naming every field of `fields` in which `stored` (what `what` holds)
  differs from the sampling config's `model`, both values, and `fix`."""
  differ = [
    f"model.{f}={getattr(stored, f)} (config: {getattr(model, f)})"
    for f in fields
    if getattr(stored, f) != getattr(model, f)
  ]
  if differ:
    raise ValueError(f"{what} has {', '.join(differ)}; {fix}")


def open_checkpoint(
  config, checkpoint: str | None, step: int | None, allow_attention_change: bool = False
) -> store.Source | None:
  """The DiT experts `checkpoint` holds (None without one) after checking them against
  `config`'s model: the architecture and, for a training workdir, the attention it was trained
  with; a workdir's params are then read into the sampling model (its param_dtype)."""
  if not checkpoint:
    if step is not None:
      raise ValueError("--step is for training workdirs; no --checkpoint was given")
    return None
  source = store.source(checkpoint, step)
  model = DiTConfig.from_config(config.model)
  if source.kind == "converted":
    if "high" not in source.experts[0]:
      raise FileNotFoundError(f"{checkpoint} has no 'high' (or single) expert; it has 'low' only")
    for (name,) in source.experts:
      check_model(f"{checkpoint}/{name}", store.component_config(checkpoint, name)[1], model)
    return source
  what, trained = f"training workdir {checkpoint}", source.config
  check_model(what, trained, model, (*formats.DIT_SHAPE_FIELDS, "scan_layers"))
  if not allow_attention_change:
    as_trained = " ".join(f"--set model.{f}={getattr(trained, f)}" for f in ATTENTION_FIELDS)
    fix = f"sample as trained ({as_trained}) or pass --allow_attention_change"
    check_model(what, trained, model, ATTENTION_FIELDS, fix)
  return dataclasses.replace(source, config=model)


def _groups(source: store.Source | None, loras) -> tuple[tuple[str, ...], ...]:
  """The expert groups to build, each one param tree: `source`'s, or one for a random init,
  split where the experts of a group get different LoRAs."""
  groups = (store.EXPERTS,) if source is None else source.experts
  out = []
  for names in groups:
    if len({tuple(r for r, _ in lora_files.serving(loras, n)) for n in names}) > 1:
      out += [(n,) for n in names]
    else:
      out.append(names)
  served = {n for names in out for n in names}
  for request, _ in loras:
    if not served & set(request.experts):
      raise lora_files.LoraFileError(
        f"{request.path} is for the {request.experts[0]} expert, but the checkpoint has one "
        f"model for every step ({'+'.join(sorted(served))}): drop the {request.experts[0]}="
      )
  return tuple(out)


def _experts(
  model: WanDiT, config, source: store.Source | None, random_init: bool, mesh, rules, loras=()
):
  """(high, low or None) from `source` or a random init, each with its LoRAs merged: variable
  trees, or with `sample.swap_experts` loaders that restore an expert just before its stage."""
  if source is None and not random_init:
    raise ValueError("give --checkpoint (converted folder or training workdir) or --random_init")
  if source is not None and source.kind == "training" and source.experts[0] != store.EXPERTS:
    only = source.experts[0][0]
    print(f"{source.path} trained the {only}-noise expert only: it serves every step")

  def load(names):
    if source is None:
      init = dit.init_fn(model.config)
      params, _ = sharding.init_sharded(init, mesh, rules, jax.random.key(config.sample.seed))
    else:
      params = source.load(names, mesh, rules)
    return {"params": lora_files.apply(params, loras, model.config, names[0])}

  loaders = [functools.partial(load, names) for names in _groups(source, loras)]
  experts = [load if config.sample.swap_experts and source else load() for load in loaders]
  return experts[0], experts[1] if len(experts) > 1 else None


def _converted(source: store.Source | None, what: str) -> str:
  """The converted folder of `source`, else an error saying that `what` needs one."""
  if source is None or source.kind != "converted":
    raise ValueError(
      f"the {what} needs --checkpoint: a converted directory with a '{what}' component (a "
      "training workdir holds only the DiT)"
    )
  return source.path


def _text(config, source, tokenizer, mesh, rules):
  s = config.sample
  if s.text_encoder == "toy":
    return text_backends.ToyText(config.model["text_dim"], s.text_len)
  checkpoint = _converted(source, "text_encoder")
  tokenizer = tokenizer or s.tokenizer
  return text.PromptEncoder.from_checkpoint(checkpoint, tokenizer, mesh, rules, text_len=s.text_len)


def _text_check(config, tokenizer):
  """(scene, negative prompt) -> None, raising as the text encoder would if they do not fit."""
  s = config.sample
  if s.text_encoder == "toy":
    toy = text_backends.ToyText(config.model["text_dim"], s.text_len)
    return lambda scene, negative: toy.encode_for_cfg([scene], negative)
  tok = text.Tokenizer.from_path(tokenizer or s.tokenizer)
  return lambda scene, negative: text.tokenize_prompts(tok, [scene, negative], s.text_len)


def defaults(config) -> dict:
  """What a request line leaves out, from `config`; raises naming the config key of a value no
  line could take."""
  s = config.sample
  values = dict(
    guidance=[config.sampler.guidance_high, config.sampler.guidance_low],
    height=s.height,
    width=s.width,
    steps=config.sampler.num_steps,
    seed=s.seed,
    negative_prompt=s.negative_prompt,
  )
  requests.check_defaults(values, _DEFAULT_KEYS)
  return values


def limits(config, tokenizer=None) -> requests.Limits:
  """Everything generation with `config` can take, for checking lines as they are read."""
  model = DiTConfig.from_config(config.model)
  return requests.Limits(
    max_shots=config.sample.max_shots,
    max_positions=model.rope_max_positions,
    patch=tuple(model.patch_size),
    space_stride=generator.VAE_SPACE_STRIDE,
    max_shot_frames=config.sample.max_shot_frames or None,
    check_text=_text_check(config, tokenizer),
  )


def _decoder(config, source, mesh, rules):
  """(latents, num_frames, height, width) -> uint8 video (numpy, on every process); raises
  job.NonFiniteOutputError naming the scenes whose latents or decoded pixels are not finite."""
  if config.sample.decoder == "latent_rgb":
    to_video = lambda latents, *size: (generator.latent_preview(latents, *size), None)
  else:
    checkpoint = _converted(source, "vae")
    _, vae_config = store.component_config(checkpoint, "vae")
    params = store.load(checkpoint, "vae", mesh, rules)
    decode = vae_decoder(vae_config)
    to_video = lambda latents, *size: decode(params, latents)

  def checked(latents, *size):
    job.check_finite("latents", job.finite_rows(latents))
    frames, finite_B = to_video(latents, *size)
    if finite_B is not None:
      job.check_finite("pixels", finite_B)
    return job.to_host(frames)

  return checked


def vae_decoder(vae_config):
  """Jitted (VAE params, latents [B, F, H, W, Z]) -> (uint8 video, bool [B]: pixels finite):
  the job's decode step."""

  def decode(params, latents):
    pixels = vae.decode(params, latents, vae_config)
    return video.to_uint8(pixels), job.finite_rows(pixels)

  return jax.jit(decode)


def setup(
  config, source: store.Source | None = None, *, tokenizer=None, random_init=False, loras=()
) -> dict:
  """Everything besides a request that determines its video (the sidecar's fingerprint), for
  the weights of `source` (from `open_checkpoint`) or a random init, with `loras` (from
  `lora_files.load`: their contents and scales) merged in."""
  sampler = dataclasses.asdict(SamplerConfig.from_config(config.sampler))
  for per_request in ("num_steps", "guidance_high", "guidance_low"):
    del sampler[per_request]
  sample = {k: v for k, v in config.sample.to_dict().items() if k not in _DEFAULT_KEYS}
  del sample["swap_experts"]  # memory only
  if sample["text_encoder"] != "toy":
    sample["tokenizer"] = tokenizer or sample["tokenizer"]
  if source is None:
    weights = dict(random_init=random_init, seed=config.sample.seed)
  elif source.kind == "training":
    weights = dict(training=dict(workdir=os.path.abspath(source.path), step=source.step))
  else:
    record = store.info(source.path)
    record.pop("seconds")
    for component in record["components"].values():
      component.pop("seconds")
    weights = dict(converted=record)
  if loras:
    weights["lora"] = lora_files.fingerprint(loras)
  model = dataclasses.asdict(DiTConfig.from_config(config.model))
  return json.loads(json.dumps(dict(model=model, sampler=sampler, sample=sample, weights=weights)))


def build(
  config,
  source: store.Source | None = None,
  *,
  tokenizer=None,
  random_init=False,
  params=None,
  loras=(),
) -> generator.Generator:
  """The generator for `config` with the experts of `source` (from `open_checkpoint`) or a
  random init, `loras` (from `lora_files.load`) merged in, or `params`: a DiT variable tree
  already on the config's mesh (a training run's in-memory params) serving every step."""
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.logical_rules)
  model = WanDiT(DiTConfig.from_config(config.model))
  if params is None:
    high, low = _experts(model, config, source, random_init, mesh, rules, loras)
  else:
    high, low = params, None
  s = config.sample
  return generator.Generator(
    model=model,
    sampler=SamplerConfig.from_config(config.sampler),
    params_high=high,
    params_low=low,
    text=_text(config, source, tokenizer, mesh, rules),
    decode=_decoder(config, source, mesh, rules),
    mesh=mesh,
    rules=rules,
    max_shots=s.max_shots,
    max_shot_frames=s.max_shot_frames or None,
    text_len=s.text_len,
  )


def main(argv=None) -> job.JobReport:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True, help="config file[:arg]")
  parser.add_argument("--scenes", required=True, help="JSONL file, one scene per line")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument(
    "--checkpoint", default=None, help="directory from holocine_jax.convert, or a training workdir"
  )
  parser.add_argument("--step", type=int, default=None, help="workdir step (default: newest)")
  parser.add_argument("--tokenizer", default=None, help="umT5 tokenizer.json / spiece.model")
  parser.add_argument("--random_init", action="store_true", help="random weights (smoke runs)")
  parser.add_argument(
    "--allow_attention_change",
    action="store_true",
    help="sample a training workdir with other attention than it was trained with",
  )
  parser.add_argument(
    "--lora",
    action="append",
    default=[],
    help="[high=|low=]PATH[:SCALE]: a Wan LoRA .safetensors merged into both experts (or one); "
    "repeatable",
  )
  parser.add_argument("--set", action="append", default=[], help="config override key=value")
  parser.add_argument("--no_progress", action="store_true")
  args = parser.parse_args(argv)
  config = config_file.load(args.config, args.set)
  line_defaults = defaults(config)
  source = open_checkpoint(config, args.checkpoint, args.step, args.allow_attention_change)
  step = None if source is None else source.step
  try:
    requested = [lora_files.parse(spec) for spec in args.lora]
    loras = lora_files.load(requested, DiTConfig.from_config(config.model))
    _groups(source, loras)  # a LoRA for an expert the checkpoint lacks fails here
  except lora_files.LoraFileError as e:
    parser.error(f"--lora {e}")
  weights = dict(tokenizer=args.tokenizer, random_init=args.random_init, loras=loras)
  mesh = sharding.make_mesh(config.mesh)
  with job.exclusive(args.out):
    items = list(requests.read(args.scenes, line_defaults, limits(config, args.tokenizer)))
    report = job.run(
      items,
      lambda: build(config, source, **weights),
      args.out,
      setup=setup(config, source, **weights),
      batch_size=sharding.batch_shards(mesh, sharding.logical_rules(config.logical_rules)),
      fps=config.sample.fps,
      metadata=dict(
        config=args.config,
        overrides=args.set,
        checkpoint=args.checkpoint,
        step=step,
        lora=args.lora,
      ),
      progress=not args.no_progress,
    )
  print(json.dumps(report.summary(), indent=2))
  return report


if __name__ == "__main__":
  sys.exit(main().exit_code)
