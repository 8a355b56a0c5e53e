"""The flow-matching timestep shift, shared by the sampler's schedules and training's sampling.

shift(s) = k s / (1 + (k - 1) s) puts more steps (or training draws) at high noise for k > 1;
works on numpy arrays, jnp arrays and floats.
"""


def shift(s, k: float):
  """Shifted sigma k s / (1 + (k - 1) s)."""
  return k * s / (1 + (k - 1) * s)


def unshift(s, k: float):
  """Inverse of `shift`: the sigma that `shift(., k)` maps to `s`."""
  return s / (k - (k - 1) * s)
