"""Batch offline sampling: a JSONL file of scenes in, one mp4 + JSON sidecar per scene out.

  python -m holocine_jax.sample --config configs/holocine_a14b.py:attention=sparse \
      --checkpoint /data/holocine_sparse --tokenizer /data/umt5-xxl --scenes scenes.jsonl --out out/
  python -m holocine_jax.sample --config configs/tiny.py --random_init --scenes s.jsonl --out out/
  python -m holocine_jax.sample --config configs/tiny.py --checkpoint /tmp/holocine_tiny \
      --scenes s.jsonl --out out/

`--checkpoint` is a directory written by `python -m holocine_jax.convert` (components `high`,
`low`, `text_encoder`, `vae`) or a training workdir (`python -m holocine_jax.train`: its newest
step, or `--step N`; only the params are restored, cast to the config's param_dtype as they are
read, straight into the sampling shardings; a model trained for one expert serves every step;
the text encoder and decoder are then `toy` / `latent_rgb`). Its model must have the config's
architecture (one error names the fields that differ). Before the model is built, `--out` is
locked for this job (a second job on it fails) and every line is validated completely (types and
the model's limits); a bad line is reported with its line number and skipped. Rerunning skips a
finished scene only if nothing that determines its video changed (request, model, sampler,
decoder, weights: the workdir and step; see `setup`), and generates a changed one again. See
sampling/requests.py for the line format. Exit codes: 0 every scene done or skipped; 1 a bad
line or a failed scene (the printed JSON summary lists them); any other error (a config value,
`--out`, the checkpoint) raises.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import jax

from holocine_jax import config_file, convert, sharding, text, video
from holocine_jax.model import dit, vae
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT
from holocine_jax.sampling import generator, job, requests, text_backends
from holocine_jax.sampling.pipeline import SamplerConfig
from holocine_jax.weights import formats, restore

# request field -> the config key giving its default
_DEFAULT_KEYS = dict(
  seed="sample.seed",
  height="sample.height",
  width="sample.width",
  steps="sampler.num_steps",
  guidance="sampler.guidance_high / sampler.guidance_low",
  negative_prompt="sample.negative_prompt",
)


def check_architecture(
  what: str, stored: DiTConfig, model: DiTConfig, fields=formats.DIT_SHAPE_FIELDS
):
  """Raises ValueError naming every field of `fields` in which `stored` (what `what` holds)
  differs from the sampling config's `model`."""
  differ = [
    f"{f}={getattr(stored, f)} (config: {getattr(model, f)})"
    for f in fields
    if getattr(stored, f) != getattr(model, f)
  ]
  if differ:
    raise ValueError(f"{what} has {', '.join(differ)}; sample with the config it was made with")


def workdir_step(config, checkpoint: str | None, step: int | None) -> int | None:
  """For a training workdir: the step to sample (`step`, else its newest), after checking its
  config.json's model against `config`; None for a converted folder or no checkpoint."""
  if not (checkpoint and restore.is_workdir(checkpoint)):
    if checkpoint and not os.path.isfile(os.path.join(checkpoint, convert.RECORD)):
      raise FileNotFoundError(
        f"--checkpoint {checkpoint} is neither a converted folder ({convert.RECORD}) nor a "
        "training workdir (checkpoints/)"
      )
    if step is not None:
      raise ValueError(f"--step is for training workdirs; --checkpoint {checkpoint} is not one")
    return None
  trained = DiTConfig.from_config(restore.config(checkpoint).model)
  model = DiTConfig.from_config(config.model)
  check_architecture(
    f"training workdir {checkpoint}", trained, model, (*formats.DIT_SHAPE_FIELDS, "scan_layers")
  )
  return restore.resolve_step(checkpoint, step)


def _experts(model: WanDiT, config, checkpoint, step, random_init: bool, mesh, rules):
  """(high, low or None) from a converted checkpoint, a training workdir's `step` or a random
  init: param trees, or with `sample.swap_experts` loaders that restore an expert just before
  its denoising stage."""
  if step is not None:
    expert = restore.config(checkpoint).train.get("expert", "all")
    if expert != "all":
      print(f"{checkpoint} trained the {expert}-noise expert only: it serves every step")
    load = lambda: {"params": restore.params(checkpoint, step, model.config, mesh, rules)}
    return (load if config.sample.swap_experts else load()), None
  if checkpoint:
    found = convert.info(checkpoint)["components"]
    experts = []
    for name in ("high", "low"):
      if name not in found:
        experts.append(None)
        continue
      _, stored = convert.component_config(checkpoint, name)
      check_architecture(f"{checkpoint}/{name}", stored, model.config)
      load = lambda name=name: {"params": convert.load(checkpoint, name, mesh, rules)}
      experts.append(load if config.sample.swap_experts else load())
    if experts[0] is None:
      raise FileNotFoundError(f"{checkpoint} has no 'high' (or single) expert; it has {found}")
    return experts[0], experts[1]
  if not random_init:
    raise ValueError("give --checkpoint (a converted directory) or --random_init (smoke tests)")
  init = dit.init_fn(model.config)
  params, _ = sharding.init_sharded(init, mesh, rules, jax.random.key(config.sample.seed))
  return params, None


def _converted(checkpoint: str | None, what: str) -> str:
  """`checkpoint` if it is a converted folder, else an error saying that `what` needs one."""
  if not checkpoint or restore.is_workdir(checkpoint):
    raise ValueError(
      f"the {what} needs --checkpoint: a converted directory with a '{what}' component (a "
      "training workdir holds only the DiT)"
    )
  return checkpoint


def _text(config, checkpoint, tokenizer, mesh, rules):
  s = config.sample
  if s.text_encoder == "toy":
    return text_backends.ToyText(config.model["text_dim"], s.text_len)
  checkpoint = _converted(checkpoint, "text_encoder")
  _, umt5_config = convert.component_config(checkpoint, "text_encoder")
  return text.PromptEncoder(
    text.Tokenizer.from_path(tokenizer or s.tokenizer),
    umt5_config,
    convert.load(checkpoint, "text_encoder", mesh, rules),
    mesh,
    rules,
    text_len=s.text_len,
  )


def _text_check(config, tokenizer):
  """(scene, negative prompt) -> None, raising as the text encoder would if they do not fit."""
  s = config.sample
  if s.text_encoder == "toy":
    toy = text_backends.ToyText(config.model["text_dim"], s.text_len)
    return lambda scene, negative: toy.encode_for_cfg([scene], negative)
  tok = text.Tokenizer.from_path(tokenizer or s.tokenizer)
  return lambda scene, negative: text.tokenize_prompts(tok, [scene, negative], s.text_len)


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


def _decoder(config, checkpoint, mesh, rules):
  """(latents, num_frames, height, width) -> uint8 video; raises job.NonFiniteOutputError naming
  the scenes whose latents or decoded pixels are not finite."""
  if config.sample.decoder == "latent_rgb":
    to_video = lambda latents, *size: (generator.latent_preview(latents, *size), None)
  else:
    checkpoint = _converted(checkpoint, "vae")
    _, vae_config = convert.component_config(checkpoint, "vae")
    params = convert.load(checkpoint, "vae", mesh, rules)
    decode = vae_decoder(vae_config)
    to_video = lambda latents, *size: decode(params, latents)

  def checked(latents, *size):
    job.check_finite("latents", job.finite_rows(latents))
    frames, finite_B = to_video(latents, *size)
    if finite_B is not None:
      job.check_finite("pixels", finite_B)
    return frames

  return checked


def vae_decoder(vae_config):
  """Jitted (VAE params, latents [B, F, H, W, Z]) -> (uint8 video, bool [B]: pixels finite):
  the job's decode step."""

  def decode(params, latents):
    pixels = vae.decode(params, latents, vae_config)
    return video.to_uint8(pixels), job.finite_rows(pixels)

  return jax.jit(decode)


def setup(config, *, checkpoint=None, step=None, tokenizer=None, random_init=False) -> dict:
  """Everything besides a request that determines its video (the sidecar's fingerprint)."""
  step = workdir_step(config, checkpoint, step)
  sampler = dataclasses.asdict(SamplerConfig.from_config(config.sampler))
  for per_request in ("num_steps", "guidance_high", "guidance_low"):
    del sampler[per_request]
  sample = {k: v for k, v in config.sample.to_dict().items() if k not in _DEFAULT_KEYS}
  del sample["swap_experts"]  # memory only
  if sample["text_encoder"] != "toy":
    sample["tokenizer"] = tokenizer or sample["tokenizer"]
  if step is not None:
    weights = dict(training=dict(workdir=os.path.abspath(checkpoint), step=step))
  elif checkpoint:
    record = convert.info(checkpoint)
    record.pop("seconds")
    for component in record["components"].values():
      component.pop("seconds")
    weights = dict(converted=record)
  else:
    weights = dict(random_init=random_init, seed=config.sample.seed)
  model = dataclasses.asdict(DiTConfig.from_config(config.model))
  return json.loads(json.dumps(dict(model=model, sampler=sampler, sample=sample, weights=weights)))


def build(
  config, *, checkpoint=None, step=None, tokenizer=None, random_init=False
) -> generator.Generator:
  step = workdir_step(config, checkpoint, step)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.logical_rules)
  model = WanDiT(DiTConfig.from_config(config.model))
  high, low = _experts(model, config, checkpoint, step, random_init, mesh, rules)
  s = config.sample
  return generator.Generator(
    model=model,
    sampler=SamplerConfig.from_config(config.sampler),
    params_high=high,
    params_low=low,
    text=_text(config, checkpoint, tokenizer, mesh, rules),
    decode=_decoder(config, checkpoint, mesh, rules),
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
  parser.add_argument("--set", action="append", default=[], help="config override key=value")
  parser.add_argument("--no_progress", action="store_true")
  args = parser.parse_args(argv)
  config = config_file.load(args.config, args.set)
  s = config.sample
  defaults = dict(
    guidance=[config.sampler.guidance_high, config.sampler.guidance_low],
    height=s.height,
    width=s.width,
    steps=config.sampler.num_steps,
    seed=s.seed,
    negative_prompt=s.negative_prompt,
  )
  requests.check_defaults(defaults, _DEFAULT_KEYS)
  step = workdir_step(config, args.checkpoint, args.step)
  weights = dict(
    checkpoint=args.checkpoint, step=step, tokenizer=args.tokenizer, random_init=args.random_init
  )
  mesh = sharding.make_mesh(config.mesh)
  with job.exclusive(args.out):
    items = list(requests.read(args.scenes, defaults, limits(config, args.tokenizer)))
    report = job.run(
      items,
      lambda: build(config, **weights),
      args.out,
      setup=setup(config, **weights),
      batch_size=sharding.batch_shards(mesh, sharding.logical_rules(config.logical_rules)),
      fps=s.fps,
      metadata=dict(config=args.config, overrides=args.set, checkpoint=args.checkpoint, step=step),
      progress=not args.no_progress,
    )
  print(json.dumps(report.summary(), indent=2))
  return report


if __name__ == "__main__":
  sys.exit(main().exit_code)
