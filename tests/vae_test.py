"""Wan2.1 VAE: parity with diffusers AutoencoderKLWan (fp32), chunked scan, tiling, bad inputs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from flax.core import meta

from holocine_jax import sharding, video
from holocine_jax.model import vae
from holocine_jax.weights import diffusers_vae, keymap
from tests import support

# Tiny config: two temporal and three spatial resamples (all four Resample modes), shortcut
# convs (8 -> 16 and 8 -> 16 after the halving upsamplers) and the mid attention.
MEAN, STD = support.MEAN, support.STD
CFG = vae.VAEConfig(**support.VAE, latents_mean=MEAN, latents_std=STD)
TOL = 1e-5  # measured max abs error: encode <= 4.2e-7, decode <= 1.9e-6 (outputs in [-1, 1])

# CPU compile dominates these tests: cheaper backend passes cut it ~5x (numerics unchanged).
encode = jax.jit(vae.encode, static_argnums=2, compiler_options=support.FAST_COMPILE)
decode = jax.jit(vae.decode, static_argnums=2, compiler_options=support.FAST_COMPILE)


@pytest.fixture(scope="module")
def torch_vae():
  return support.vae_model()  # norm gammas random, so the key map is really tested


@pytest.fixture(scope="module")
def params(torch_vae):
  abstract = meta.unbox(jax.eval_shape(vae.init_fn(CFG), jax.random.key(0)))
  state = {k: v.numpy() for k, v in torch_vae.state_dict().items()}
  return jax.tree.map(jnp.asarray, keymap.convert(state, diffusers_vae.RULES, abstract))


def _clip(t, h=32, w=32, seed=0):
  return np.random.RandomState(seed).uniform(-1, 1, (1, t, h, w, 3)).astype(np.float32)


def _torch_encode(model, x_BxTxHxWxC):
  """Posterior mean normalised as the Wan pipelines do: (mu - mean) / std."""
  with torch.no_grad():
    mu = model.encode(torch.from_numpy(x_BxTxHxWxC.transpose(0, 4, 1, 2, 3))).latent_dist.mean
  mean, std = np.asarray(MEAN, np.float32), np.asarray(STD, np.float32)
  return (mu.numpy().transpose(0, 2, 3, 4, 1) - mean) / std


def _torch_decode(model, latents_BxTxHxWxZ):
  z = latents_BxTxHxWxZ * np.asarray(STD, np.float32) + np.asarray(MEAN, np.float32)
  with torch.no_grad():
    out = model.decode(torch.from_numpy(np.ascontiguousarray(z.transpose(0, 4, 1, 2, 3)))).sample
  return out.numpy().transpose(0, 2, 3, 4, 1)


@pytest.mark.parametrize("frames", [9, 13])
def test_parity_with_diffusers(torch_vae, params, frames):
  x = _clip(frames, seed=frames)
  lat_ref = _torch_encode(torch_vae, x)
  lat = np.asarray(encode(params, jnp.asarray(x), CFG))
  assert lat.shape == (1, (frames - 1) // 4 + 1, 4, 4, 4) == lat_ref.shape
  assert np.abs(lat - lat_ref).max() < TOL  # measured 4.2e-7 (9 and 13 frames), |lat| <= 0.8

  out_ref = _torch_decode(torch_vae, lat_ref)
  out = np.asarray(decode(params, jnp.asarray(lat_ref), CFG))
  assert out.shape == x.shape == out_ref.shape
  assert (np.abs(out_ref) < 0.999).mean() > 0.9  # not saturated by the clamp: a real comparison
  assert np.abs(out - out_ref).max() < TOL  # measured 1.9e-6 (9 frames), 1.7e-6 (13)


def test_chunked_scan_matches_whole_clip(params):
  """13 frames = 4 latent frames: the first, then a scan of one per step (the default) equals
  the rest all at once (no scan) and a scan of 2 per step plus a remainder of 1."""
  x = jnp.asarray(_clip(13, seed=13))
  lat = encode(params, x, CFG)
  whole = encode(params, x, dataclasses.replace(CFG, encode_chunk=3))
  assert np.abs(np.asarray(whole - lat)).max() < 1e-6  # measured 3.2e-7
  step2 = encode(params, x, dataclasses.replace(CFG, encode_chunk=2))
  assert np.abs(np.asarray(step2 - lat)).max() < 1e-6  # measured 2.8e-7
  out = decode(params, lat, CFG)
  whole = decode(params, lat, dataclasses.replace(CFG, decode_chunk=3))
  assert np.abs(np.asarray(whole - out)).max() < 1e-5  # measured 9.5e-7
  step2 = decode(params, lat, dataclasses.replace(CFG, decode_chunk=2))
  assert np.abs(np.asarray(step2 - out)).max() < 1e-5  # measured 1.1e-6


def test_tiled_matches_diffusers_tiling(torch_vae, params):
  """Overlapping ragged tiles (24px, stride 16, 8px blends) match diffusers' tiled encode
  (48x16 frames: tiles stacked in height) and tiled decode (48x40 frames: a 3x3 tile grid)."""
  tiled = dataclasses.replace(CFG, tile_sample_size=(24, 24), tile_sample_stride=(16, 16))
  x = _clip(5, h=48, w=16, seed=2)
  lat_in = np.random.RandomState(2).randn(1, 2, 6, 5, 4).astype(np.float32)
  torch_vae.enable_tiling(24, 24, 16, 16)
  try:
    lat_ref = _torch_encode(torch_vae, x)
    out_ref = _torch_decode(torch_vae, lat_in)
  finally:
    torch_vae.disable_tiling()
  lat = np.asarray(encode(params, jnp.asarray(x), tiled))
  assert np.abs(lat - lat_ref).max() < TOL  # measured 3.9e-7
  out = np.asarray(decode(params, jnp.asarray(lat_in), tiled))
  assert np.abs(out - out_ref).max() < TOL  # measured 1.8e-6
  # Tiling changes the result (receptive field and attention cut at tile borders): with these
  # random weights and 3x3-latent tiles, |tiled - untiled| decode is 0.84 max, 0.11 mean
  # (encode: 0.26 max). Only a tile covering the frame is exact (next test).
  untiled = np.asarray(decode(params, jnp.asarray(lat_in), CFG))
  assert np.abs(out - untiled).max() > 1e-2


def test_tile_covering_the_frame_is_untiled(params):
  """A tile at least as large as the frame turns tiling off: the very same computation."""
  lat = jnp.zeros((1, 2, 4, 4, 4))
  big = dataclasses.replace(CFG, tile_sample_size=(32, 32), tile_sample_stride=(16, 16))
  trace = lambda cfg: str(jax.make_jaxpr(vae.decode, static_argnums=2)(params, lat, cfg))
  assert trace(big) == trace(CFG)
  small = dataclasses.replace(CFG, tile_sample_size=(16, 16), tile_sample_stride=(16, 16))
  assert trace(small) != trace(CFG)


def test_full_config_key_map_is_complete():
  """Every key of diffusers' default (Wan2.1) AutoencoderKLWan maps to our default tree."""
  with torch.device("meta"):
    ref = AutoencoderKLWan()
  abstract = meta.unbox(jax.eval_shape(vae.init_fn(vae.VAEConfig()), jax.random.key(0)))
  state = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in ref.state_dict().items()}
  rules = diffusers_vae.RULES
  flat = dict(jax.tree_util.tree_flatten_with_path(abstract)[0])
  hits = {keymap.match(rules, k) for k in state}
  assert None not in hits
  assert len({h[0] for h in hits}) == len(state) == len(flat)
  for key, value in state.items():  # shapes agree after the layout transform
    path, _, transform = keymap.match(rules, key)
    spec = flat[tuple(jax.tree_util.DictKey(p) for p in path.split("/"))]
    assert keymap.TRANSFORMS[transform](value).size == np.prod(spec.shape), key
  assert tuple(ref.config.latents_mean) == vae.VAEConfig().latents_mean
  assert tuple(ref.config.latents_std) == vae.VAEConfig().latents_std


def test_logical_axes_and_batch_sharding(params):
  """Every param is named; params placed by the rules run under a mesh with 'act_batch'."""
  boxed = jax.eval_shape(vae.init_fn(CFG), jax.random.key(0))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, meta.Partitioned))
  assert leaves and all(isinstance(x, meta.Partitioned) for x in leaves)
  assert all(len(x.names) == x.value.ndim for x in leaves)
  mesh = sharding.make_mesh({"data": -1})
  rules = sharding.DEFAULT_LOGICAL_RULES
  placed = jax.device_put(params, meta.unbox(sharding.shardings_for(boxed, mesh, rules)))
  x = _clip(9, seed=9)
  with sharding.activate(mesh, rules):
    lat = encode(placed, jnp.asarray(x), CFG)
    out = decode(placed, lat, CFG)
  np.testing.assert_allclose(lat, encode(params, jnp.asarray(x), CFG), atol=1e-6)
  assert out.shape == x.shape


@pytest.mark.parametrize(
  ("shape", "match"),
  [
    ((1, 10, 16, 16, 3), r"frame count 10 is not 4t\+1.*use 9 or 13"),
    ((1, 9, 16, 16, 4), "must have 3 channels"),
    ((1, 9, 20, 16, 3), "divisible by 8, got 20x16"),
    ((9, 16, 16, 3), r"\[B, T, H, W, C\]"),
  ],
)
def test_bad_video_shapes(params, shape, match):
  with pytest.raises(ValueError, match=match):
    vae.encode(params, jnp.zeros(shape), CFG)


def test_bad_latents_and_config():
  with pytest.raises(ValueError, match=r"latents must be \[B, T, H, W, 4\]"):
    vae.decode({}, jnp.zeros((1, 2, 4, 4, 16)), CFG)
  with pytest.raises(ValueError, match="latents_mean/std need z_dim=16"):
    vae.VAEConfig(latents_mean=(0.0,) * 4)
  with pytest.raises(ValueError, match="multiples of 8"):
    vae.VAEConfig(tile_sample_size=(20, 20))


def test_frame_conversion():
  frames = np.random.RandomState(0).randint(0, 256, (5, 16, 8, 3), dtype=np.uint8)
  x = video.to_model_range(frames)
  assert x.dtype == jnp.float32 and float(x.min()) >= -1 and float(x.max()) <= 1
  np.testing.assert_array_equal(np.asarray(video.to_uint8(x)), frames)
  assert int(video.to_uint8(jnp.full((1, 1, 1, 3), 2.0))[0, 0, 0, 0]) == 255  # clipped
  with pytest.raises(ValueError, match=r"frame count 4 is not 4t\+1.*use 1 or 5"):
    video.to_model_range(frames[:4])
  with pytest.raises(ValueError, match="must be uint8"):
    video.to_model_range(frames.astype(np.float32))
  with pytest.raises(ValueError, match="must have 3 channels"):
    video.to_model_range(frames[..., :2])
  with pytest.raises(ValueError, match="divisible by 8, got 12x8"):
    video.to_model_range(frames[:, :12])
  video.check_num_frames(241)
  with pytest.raises(ValueError, match="frame count 240"):
    video.check_num_frames(240)
