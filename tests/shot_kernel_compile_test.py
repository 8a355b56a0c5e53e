"""The shot kernel compiles for accelerators from this CPU host: Mosaic for deviceless TPU chips
(forward and backward, one chip and shard_map meshes), Triton for CUDA (`jax.export`); and the
implementation and interpret mode follow the platform of the mesh in context, not the host."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from holocine_jax import attention, layout, sharding, topology
from holocine_jax.attention import shot_kernel
from holocine_jax.layout import ShotLayout

HEAD_DIM = 128
BLOCKS = shot_kernel.BlockSizes(512, 512)
TOKENS_PER_FRAME = 1560  # one 480x832 latent frame
# 3 latent frames = 4680 tokens; cuts at 1560 / 3120 fall inside 512-token blocks.
LAYOUTS = [(0, 1, 3), (0, 2, 3)]


def _shots(batch: int = 2):
  lays = [ShotLayout(LAYOUTS[i % 2], TOKENS_PER_FRAME) for i in range(batch)]
  return layout.make_batch(lays, max_shot_frames=2)


def _abstract(tree, sharding_):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_), tree)


def _qkv_abstract(shots, heads, dtype, sharding_, head_dim=HEAD_DIM):
  b, num_l = shots.shot_id_BxL.shape
  return [jax.ShapeDtypeStruct((b, num_l, heads, head_dim), dtype, sharding=sharding_)] * 3


def _grads(attend):
  loss = lambda q, k, v, s: jnp.sum(attend(q, k, v, s).astype(jnp.float32) ** 2)
  return jax.grad(loss, argnums=(0, 1, 2))


def _sparse(q, k, v, shots):
  return attention.self_attention(
    q, k, v, mode="sparse", shots=shots, impl="auto", block_sizes=BLOCKS
  )


def _one_chip(name: str):
  return jax.sharding.Mesh(np.array(topology.devices(name)[:1]), ("x",))


@pytest.mark.parametrize(
  "chip, dtype, backward, head_dim",
  [
    ("v5p:1x1x1", jnp.bfloat16, True, HEAD_DIM),
    ("v5p:1x1x1", jnp.float32, True, HEAD_DIM),
    ("v5e:1x1", jnp.bfloat16, False, HEAD_DIM),
    ("v6e:1x1", jnp.bfloat16, False, 16),  # a small head (tiny configs) is padded to 128 lanes
  ],
)
def test_compiles_for_one_tpu_chip(chip, dtype, backward, head_dim):
  mesh = _one_chip(chip)
  shots = _shots()
  replicated = NamedSharding(mesh, P())
  qkv = _qkv_abstract(shots, 2, dtype, replicated, head_dim)
  args = (*qkv, _abstract(shots, replicated))
  fn = _grads(_sparse) if backward else _sparse
  with jax.set_mesh(mesh):
    lowered = jax.jit(fn).lower(*args)
    assert "tpu_custom_call" in lowered.as_text()  # Mosaic, not interpret mode
    lowered.compile()


@pytest.mark.parametrize(
  "sizes, batch, heads",
  [
    (dict(fsdp=4), 4, 2),  # one example per chip, batch split over data * fsdp > 1
    (dict(fsdp=2, context=2), 2, 40),  # sequence-sharded input, 40 heads over context
  ],
  ids=["fsdp4", "context2"],
)
def test_compiles_under_shard_map_on_v5p8(sizes, batch, heads):
  mesh = sharding.make_mesh(sizes, devices=topology.devices("v5p-8"))
  shots = _shots(batch)
  act = NamedSharding(mesh, P(("data", "fsdp"), "context", "tensor", None))
  args = (
    *_qkv_abstract(shots, heads, jnp.bfloat16, act),
    _abstract(shots, NamedSharding(mesh, P(("data", "fsdp")))),
  )
  with sharding.activate(mesh, sharding.DEFAULT_LOGICAL_RULES):
    jax.jit(_grads(_sparse)).lower(*args).compile()


def test_implementation_and_interpret_follow_the_mesh_platform():
  assert attention.platform() == "cpu"
  assert attention.resolve_impl("auto") == "packed"
  mesh = _one_chip("v5p:1x1x1")
  shots = _shots()
  replicated = NamedSharding(mesh, P())
  args = (*_qkv_abstract(shots, 2, jnp.bfloat16, replicated), _abstract(shots, replicated))
  full = lambda q, k, v, s: attention.self_attention(
    q, k, v, mode="full", shots=None, impl="auto", block_sizes=BLOCKS
  )
  with jax.set_mesh(mesh):
    assert attention.platform() == "tpu"
    assert attention.resolve_impl("auto") == "kernel"
    for fn in (_sparse, full):
      assert "tpu_custom_call" in jax.jit(fn).lower(*args).as_text()


def test_triton_export_for_cuda():
  shots = _shots()
  args = (*_qkv_abstract(shots, 2, jnp.bfloat16, None), _abstract(shots, None))
  attend = lambda q, k, v, s: shot_kernel.shot_attention(q, k, v, s, BLOCKS, False, "gpu")
  checks = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  for fn, calls in ((attend, 1), (_grads(attend), 4)):  # forward; forward + dq + 2 x dkv
    exported = jax.export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=checks)(*args)
    assert exported.mlir_module().count("custom_call @__gpu$xla.gpu.triton") == calls
