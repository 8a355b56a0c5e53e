"""umT5 encoder: ours (jitted JAX) vs transformers UMT5EncoderModel (torch), same run, same weights.

python benchmarks/text_encoder.py                      # umT5-small-like, B=2, T=512, CPU
python benchmarks/text_encoder.py --layers 2 --iters 3  # quicker

Prints one table: compile time (ours, separately), median time per call, ratio to torch, and the
max abs difference to the torch output (fp32; bf16 row for reference). Weights are random but
identical: torch's state dict goes through our key map.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import UMT5Config as HFConfig  # noqa: E402
from transformers import UMT5EncoderModel  # noqa: E402

from holocine_jax.model import umt5  # noqa: E402
from holocine_jax.weights import formats, keymap  # noqa: E402
from holocine_jax.weights import transformers_umt5 as tu  # noqa: E402


def _interleaved_medians(fns, iters):
  """Median seconds per call of each fn, timed round-robin so machine load hits all alike."""
  times = [[] for _ in fns]
  for _ in range(iters):
    for fn, ts in zip(fns, times, strict=True):
      t = time.perf_counter()
      fn()
      ts.append(time.perf_counter() - t)
  return [statistics.median(ts) for ts in times]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--vocab", type=int, default=32128)
  p.add_argument("--d_model", type=int, default=512)
  p.add_argument("--d_kv", type=int, default=64)
  p.add_argument("--heads", type=int, default=6)
  p.add_argument("--d_ff", type=int, default=1024)
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--length", type=int, default=512)
  p.add_argument("--iters", type=int, default=5)
  a = p.parse_args()

  hf_config = HFConfig(
    vocab_size=a.vocab, d_model=a.d_model, d_kv=a.d_kv, num_heads=a.heads, d_ff=a.d_ff,
    num_layers=a.layers, relative_attention_num_buckets=32, relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6,
  )  # fmt: skip
  torch.manual_seed(0)
  ref = UMT5EncoderModel(hf_config).eval()
  state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}

  rng = np.random.default_rng(0)
  ids = rng.integers(3, a.vocab, (a.batch, a.length)).astype(np.int32)
  lengths = np.linspace(a.length, a.length // 2, a.batch).astype(int)
  mask = np.arange(a.length)[None] < lengths[:, None]
  ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask.astype(np.int64))

  def run_torch():
    with torch.no_grad():
      return ref(input_ids=ids_t, attention_mask=mask_t).last_hidden_state

  want = run_torch().numpy() * mask[..., None]
  names, compile_times, fns, errs = ["transformers torch fp32"], [float("nan")], [run_torch], [0.0]
  for dtype in ("float32", "bfloat16"):
    config = umt5.UMT5Config(
      vocab_size=a.vocab, d_model=a.d_model, d_kv=a.d_kv, num_heads=a.heads, d_ff=a.d_ff,
      num_layers=a.layers, param_dtype=dtype, dtype=dtype,
    )  # fmt: skip
    params = jax.device_put(keymap.convert(state, tu.RULES, formats.abstract("umt5", config)[0]))
    args = (params, jnp.asarray(ids), jnp.asarray(mask))
    fn = jax.jit(lambda p, i, m, c=config: umt5.encode(p, i, m, config=c))
    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_times.append(time.perf_counter() - t)
    out = compiled(*args).block_until_ready()
    errs.append(float(np.abs(np.asarray(out, np.float32) - want).max()))
    names.append(f"ours jax jit {dtype}")
    fns.append(lambda c=compiled, args=args: c(*args).block_until_ready())
  call_times = _interleaved_medians(fns, a.iters)
  t_torch = call_times[0]

  print(
    f"umT5 encoder: vocab {a.vocab}, d_model {a.d_model}, heads {a.heads}x{a.d_kv}, d_ff {a.d_ff}, "
    f"{a.layers} layers, batch {a.batch} x {a.length} tokens (lengths {lengths.tolist()}); "
    f"{jax.devices()[0].platform} jax {jax.__version__}, torch {torch.__version__} "
    f"({torch.get_num_threads()} threads); median of {a.iters} interleaved calls; output scale "
    f"{np.abs(want).max():.3g}"
  )
  header = (
    f"{'implementation':<26}{'compile s':>10}{'ms / call':>11}{'vs torch':>10}{'max |err|':>11}"
  )
  print(header)
  print("-" * len(header))
  for name, t_compile, t_call, err in zip(names, compile_times, call_times, errs, strict=True):
    compile_s = "-" if np.isnan(t_compile) else f"{t_compile:.2f}"
    print(f"{name:<26}{compile_s:>10}{t_call * 1e3:>11.1f}{t_torch / t_call:>9.2f}x{err:>11.2e}")


if __name__ == "__main__":
  main()
