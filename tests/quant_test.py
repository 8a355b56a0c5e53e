"""int8 / nf4 weight quantization: codes and scales equal references written from the definitions
(and qwix's nf4), bounded round-trip error, and a quantized tiny DiT close to its bf16 base."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix
import scipy.stats
from flax.core import meta

from configs import tiny
from holocine_jax.model import dit, lora, quant
from holocine_jax.model.config import DiTConfig
from holocine_jax.model.dit import WanDiT
from tests import support

# (kernel shape, contracted dims): q / ffn_in (1 dim), o (heads x head dim), nf4 whole-axis block.
KERNELS = [((128, 6), 1), ((3, 128, 5), 2), ((48, 7), 1)]


def _kernel(shape, seed=0):
  w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  w[..., 0] = 0.0  # an all-zero output channel: scale 0, codes 0, no NaN
  return w


def _int8_reference(w, n_in):
  """Symmetric per output channel: scale = absmax over the contracted dims / 127."""
  scale = np.abs(w).max(axis=tuple(range(n_in))) / 127.0
  codes = np.clip(np.round(w / np.where(scale > 0, scale, 1.0)), -127, 127)
  return codes.astype(np.int32), scale.astype(np.float32)


def _nf4_table():
  """QLoRA's NormalFloat4 from its definition (bitsandbytes create_normal_map, offset 0.9677):
  8 positive and 7 negative N(0, 1) quantiles, and 0, normalised to [-1, 1]."""
  offset = 0.9677083
  pos = scipy.stats.norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
  neg = -scipy.stats.norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
  values = np.sort(np.concatenate([pos, [0.0], neg]))
  return values / np.abs(values).max()


def _nf4_reference(w, n_in):
  """Blocks of 64 (else the whole axis) along the last contracted axis; nearest table value."""
  last = w.shape[n_in - 1]
  block = 64 if last % 64 == 0 else last
  blocked = w.reshape(*w.shape[: n_in - 1], last // block, block, *w.shape[n_in:])
  scale = np.abs(blocked).max(axis=n_in, keepdims=True)
  normed = blocked / np.where(scale > 0, scale, 1.0)
  table = np.asarray(quant.NF4_TABLE, np.float32)
  codes = np.abs(normed[..., None] - table).argmin(-1).reshape(w.shape)
  return codes, np.squeeze(scale, n_in).astype(np.float32)


def test_nf4_table_is_qloras_normal_float():
  np.testing.assert_allclose(quant.NF4_TABLE, _nf4_table(), atol=1e-6)
  assert len(set(quant.NF4_TABLE)) == 16 and quant.NF4_TABLE[7] == 0.0


def _quantize_checked(kind, shape, n_in, reference):
  """Quantizes a known kernel, checks it against `reference`; (kernel, codes, scale, error)."""
  w = _kernel(shape)
  codes, scale = quant.quantize(jnp.asarray(w), kind, n_in)
  want_codes, want_scale = reference(w, n_in)
  assert codes.dtype == quant.code_dtype(kind)
  assert scale.shape == quant.scale_shape(kind, shape, n_in)
  np.testing.assert_array_equal(np.asarray(codes, np.int32), want_codes)
  np.testing.assert_array_equal(scale, want_scale)
  error = np.abs(quant.dequantize(codes, scale, kind, n_in, jnp.float32) - w)
  return w, codes, scale, error


@pytest.mark.parametrize("shape,n_in", KERNELS)
def test_int8_equals_the_definition(shape, n_in):
  _, codes, scale, error = _quantize_checked("int8", shape, n_in, _int8_reference)
  assert np.abs(codes).max() == 127
  assert np.all(error <= scale / 2 * (1 + 1e-6))


@pytest.mark.parametrize("shape,n_in", KERNELS)
def test_nf4_equals_the_definition_and_qwix(shape, n_in):
  w, codes, scale, error = _quantize_checked("nf4", shape, n_in, _nf4_reference)
  block = quant.nf4_block(shape[n_in - 1])
  channels = [a for a in range(len(shape)) if a != n_in - 1]
  theirs = qwix.quantize(
    jnp.asarray(w), "nf4", channelwise_axes=channels, tiled_axes={n_in - 1: block}
  )
  np.testing.assert_array_equal(np.asarray(codes, np.uint8), np.asarray(theirs.qvalue, np.uint8))
  # qwix stores scale 1 for an all-zero block (ours 0); both dequantize it to zeros.
  np.testing.assert_array_equal(scale[..., 1:], theirs.scale.reshape(scale.shape)[..., 1:])
  half_gap = np.diff(quant.NF4_TABLE).max() / 2  # 0.139: the widest gap is next to +1
  assert np.all(error <= np.repeat(scale, block, axis=n_in - 1) * half_gap * (1 + 1e-6))


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_quantizing_a_dequantized_kernel_is_exact(kind):
  """What init stores (a quantized draw) survives a dequantize -> quantize round trip."""
  codes, scale = quant.quantize(jnp.asarray(_kernel((3, 128, 5))), kind, 2)
  again = quant.quantize(quant.dequantize(codes, scale, kind, 2, jnp.float32), kind, 2)
  np.testing.assert_array_equal(np.asarray(again[0], np.int32), np.asarray(codes, np.int32))
  np.testing.assert_allclose(again[1], scale, rtol=1e-6)


@pytest.mark.parametrize("kind,tol", [("int8", 0.01), ("nf4", 0.12)])
def test_quantized_tiny_dit_is_close_to_its_bf16_base(kind, tol):
  config = dataclasses.replace(
    DiTConfig.from_config(tiny.get_config("lora=4").model), scan_layers=False
  )
  qconfig = dataclasses.replace(config, lora_base=kind)
  params = meta.unbox(dit.init_fn(config)(jax.random.key(0)))
  base, adapters = lora.split(params)
  qbase = jax.jit(lora.quantize_base, static_argnums=1)(base, qconfig)
  want = jax.eval_shape(dit.init_fn(qconfig), jax.random.key(0))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), meta.unbox(want)) == jax.tree.map(
    lambda x: (x.shape, x.dtype), lora.merge(qbase, adapters)
  )
  inputs = support.dit_inputs((2, 3, 4, 4, 4), 5)
  out = WanDiT(qconfig).apply({"params": lora.merge(qbase, adapters)}, *inputs)
  ref = WanDiT(config).apply({"params": params}, *inputs)
  err = support.rel_err(out, ref)
  assert 0 < err < tol, err
