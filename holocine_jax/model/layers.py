"""Small building blocks with logical axis names: linear layers and fp32 norms.

Every parameter is created through `nn.with_logical_partitioning`, so a rules table can shard it.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from holocine_jax.model import quant

Axes = tuple[str | None, ...]


def param_init(init, axes: Axes):
  return nn.with_logical_partitioning(init, axes)


def constrain(x, axes: Axes):
  """Logical sharding constraint on an activation (no-op without a mesh and rules)."""
  return nn.with_logical_constraint(x, axes)


class Linear(nn.Module):
  """y = x . W (+ b) contracting the last `len(in_axes)` dims of x into `features`.

  `lora_rank` > 0 adds LoRA: y += lora_scale * (x . A) . B with `lora_a` [*in, r] and `lora_b`
  [r, *out] (zeros at init) in `adapter_dtype`. `quant` ("int8" | "nf4") stores W quantized as
  `kernel` codes + `kernel_scale` (model/quant.py), dequantized to the compute dtype here."""

  features: Sequence[int]
  in_axes: Axes
  out_axes: Axes
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  use_bias: bool = True
  kernel_init: Callable | None = None  # default: lecun normal over the contracted dims
  lora_rank: int = 0
  lora_scale: float = 1.0
  adapter_dtype: jnp.dtype = jnp.float32
  quant: str = ""  # "" (plain kernel) | "int8" | "nf4"

  @nn.compact
  def __call__(self, x):
    n_in = len(self.in_axes)
    in_dims = tuple(range(x.ndim - n_in, x.ndim))
    kernel = self._kernel((*x.shape[-n_in:], *self.features))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel, ((in_dims, tuple(range(n_in))), ((), ())))
    if self.lora_rank:
      y = y + self._lora(x, in_dims)
    if not self.use_bias:
      return y
    bias = self.param(
      "bias",
      param_init(nn.initializers.zeros, self.out_axes),
      tuple(self.features),
      self.param_dtype,
    )
    return y + bias.astype(self.dtype)

  def _kernel(self, shape):
    """The kernel [*in, *out] in the compute dtype (dequantized when stored quantized)."""
    n_in = len(self.in_axes)
    init = self.kernel_init or nn.initializers.lecun_normal(
      in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, len(shape)))
    )
    axes = self.in_axes + self.out_axes
    if not self.quant:
      return self.param("kernel", param_init(init, axes), shape, self.param_dtype).astype(
        self.dtype
      )
    # Init draws one float kernel and stores its quantization (codes and scale agree); in apply
    # flax still traces the init for its shape check: zeros of the shape then.
    drawn = None
    if self.is_initializing():
      drawn = quant.quantize(init(self.make_rng("params"), shape, jnp.float32), self.quant, n_in)

    def stored(i):
      return lambda _, s, d: jnp.zeros(s, d) if drawn is None else drawn[i]

    codes = self.param("kernel", param_init(stored(0), axes), shape, quant.code_dtype(self.quant))
    scale = self.param(
      "kernel_scale",
      param_init(stored(1), quant.scale_axes(self.quant, self.in_axes, self.out_axes)),
      quant.scale_shape(self.quant, shape, n_in),
      jnp.float32,
    )
    return quant.dequantize(codes, scale, self.quant, n_in, self.dtype)

  def _lora(self, x, in_dims):
    """lora_scale * (x . A) . B: A [*in, r] (peft's kaiming-uniform init), B [r, *out] (zeros)."""
    n_in, r = len(in_dims), self.lora_rank
    a_init = nn.initializers.variance_scaling(
      1 / 3, "fan_in", "uniform", in_axis=tuple(range(n_in)), out_axis=n_in
    )
    lora_a = self.param(
      "lora_a",
      param_init(a_init, self.in_axes + ("lora_rank",)),
      (*x.shape[-n_in:], r),
      self.adapter_dtype,
    )
    lora_b = self.param(
      "lora_b",
      param_init(nn.initializers.zeros, ("lora_rank",) + self.out_axes),
      (r, *self.features),
      self.adapter_dtype,
    )
    xa = jax.lax.dot_general(
      x.astype(self.dtype), lora_a.astype(self.dtype), ((in_dims, tuple(range(n_in))), ((), ()))
    )
    xa = xa * jnp.asarray(self.lora_scale, self.dtype)
    return jax.lax.dot_general(xa, lora_b.astype(self.dtype), (((xa.ndim - 1,), (0,)), ((), ())))


class LayerNorm(nn.Module):
  """LayerNorm over the last dim in fp32 (optionally affine); returns fp32."""

  eps: float
  affine: bool = False
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    if self.affine:
      d = x.shape[-1]
      y = y * self.param(
        "scale", param_init(nn.initializers.ones, ("embed",)), (d,), self.param_dtype
      ).astype(jnp.float32)
      y = y + self.param(
        "bias", param_init(nn.initializers.zeros, ("embed",)), (d,), self.param_dtype
      ).astype(jnp.float32)
    return y


class RMSNorm(nn.Module):
  """RMS norm jointly over the trailing `axes` (Wan's qk-norm spans all heads), fp32 inside."""

  eps: float
  axes: Axes
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n = len(self.axes)
    red = tuple(range(x.ndim - n, x.ndim))
    scale = self.param(
      "scale", param_init(nn.initializers.ones, self.axes), x.shape[-n:], self.param_dtype
    )
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.square(xf).mean(red, keepdims=True) + self.eps)
    return y.astype(self.dtype) * scale.astype(self.dtype)


def modulation_table(module: nn.Module, name: str, rows: int, dim: int, param_dtype):
  """Wan's learned AdaLN table [rows, dim] (added to the time embedding), init N(0, 1/dim)."""
  init = lambda key, shape, dtype: jax.random.normal(key, shape, dtype) / dim**0.5
  return module.param(name, param_init(init, (None, "embed")), (rows, dim), param_dtype)


def layer_stack(
  layer: type[nn.Module], num_layers: int, scan: bool, num_args: int, *init_args, name: str
):
  """`num_layers` copies of `layer(*init_args)` called as x, *args -> (x, None): one nn.scan with
  params stacked on a leading 'layers' axis, or unrolled as `{name}_{i}` (same math)."""
  if scan:
    return nn.scan(
      layer,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=(nn.broadcast,) * num_args,
      length=num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )(*init_args, name=name)
  layers = [layer(*init_args, name=f"{name}_{i}") for i in range(num_layers)]

  def run(x, *args):
    for each in layers:
      x, _ = each(x, *args)
    return x, None

  return run
