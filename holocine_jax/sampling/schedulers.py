"""Flow-matching schedulers as host-precomputed, jittable step tables.

Both schedulers are exactly linear in the model outputs, so every per-step coefficient is computed
once on the host in float64 from the (static) sigma schedule; the jitted loop only indexes them.
Flow convention: x_s = (1 - s) x0 + s noise, the model predicts v = noise - x0, t = 1000 s.

- `euler`: HoloCine's FlowMatchScheduler (shift 5, sigmas = linspace(1, 0, N+1)[:-1] shifted,
  x <- x + v (s_next - s), s_next = 0 at the end).
- `euler_at`: the same Euler through given timesteps on the unshifted 1000 grid, shifted alike
  (lightx2v's `denoising_step_list` for step-distilled Wan, e.g. [1000, 750, 500, 250]).
- `unipc`: diffusers' UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type=
  "flow_prediction", solver_order=2, bh2, lower_order_final) as Wan2.2 samples (shift 12).
Legend: N steps.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import struct

from holocine_jax import timesteps as timesteps_lib

NUM_TRAIN_TIMESTEPS = 1000


@struct.dataclass
class Schedule:
  """Per-step tables. State = (x, last_x, m1, m2): the sample, the corrected sample of the last
  step, and the last two x0 predictions (UniPC's history; Euler leaves them unused).

  The tables are host numpy float32 (jit arguments or constants): building a schedule runs no
  device op, so it works under a mesh of devices that are not attached.

  At step i with model output v: m = x - s_i v; for i > 0 with a corrector,
  x <- cx*last_x + c1*m1 + c2*m2 + cm*m; then x_next = px*x + pm*m + p1*m1 + pv*v.
  """

  timesteps_N: np.ndarray  # model timestep per step (what the DiT is fed)
  sigmas_N: np.ndarray
  corrector_Nx4: np.ndarray  # (cx, c1, c2, cm); row 0 (and Euler) = (1, 0, 0, 0) on x
  predictor_Nx4: np.ndarray  # (px, pm, p1, pv)
  num_steps: int = struct.field(pytree_node=False)
  corrects: bool = struct.field(pytree_node=False)  # UniC corrector (UniPC) or none (Euler)

  def init(self, x):
    zeros = jnp.zeros_like(x)
    return (x, x, zeros, zeros)

  def step(self, state, i, v):
    """One denoising step from model output v at step i (traceable in i)."""
    x, last_x, m1, m2 = state
    f32 = jnp.float32
    v = v.astype(f32)
    m = x.astype(f32) - jnp.asarray(self.sigmas_N)[i] * v
    x = x.astype(f32)
    if self.corrects:
      cx, c1, c2, cm = jnp.asarray(self.corrector_Nx4)[i]
      x = jnp.where(i > 0, cx * last_x + c1 * m1 + c2 * m2 + cm * m, x)
    px, pm, p1, pv = jnp.asarray(self.predictor_Nx4)[i]
    x_next = px * x + pm * m + p1 * m1 + pv * v
    return (x_next.astype(state[0].dtype), x, m, m1)


def euler(num_steps: int, shift: float = 5.0) -> Schedule:
  """HoloCine's flow-matching Euler (extra-one-step sigmas, sigma_min 0)."""
  return _euler(np.linspace(1.0, 0.0, num_steps + 1)[:-1], shift)


def euler_at(timesteps_N, shift: float = 5.0) -> Schedule:
  """Euler through the given decreasing timesteps in (0, 1000] before the shift (the first is
  usually 1000: pure noise), as lightx2v's step-distill scheduler walks its step list."""
  t = np.asarray(timesteps_N, np.float64)
  if t.ndim != 1 or not len(t):
    raise ValueError(f"sampler.timesteps must be a non-empty list, got {timesteps_N!r}")
  if not ((t > 0) & (t <= NUM_TRAIN_TIMESTEPS)).all() or (np.diff(t) >= 0).any():
    raise ValueError(
      f"sampler.timesteps must decrease within (0, {NUM_TRAIN_TIMESTEPS}], got {list(t)}"
    )
  return _euler(t / NUM_TRAIN_TIMESTEPS, shift)


def _euler(sigmas_N, shift: float) -> Schedule:
  """Euler tables from unshifted sigmas; the last step goes to sigma 0."""
  num_steps = len(sigmas_N)
  s = timesteps_lib.shift(sigmas_N, shift)
  s_next = np.append(s[1:], 0.0)
  predictor = np.stack(
    [np.ones(num_steps), np.zeros(num_steps), np.zeros(num_steps), s_next - s], axis=1
  )
  return _schedule(s * NUM_TRAIN_TIMESTEPS, s, np.zeros((num_steps, 4)), predictor, False)


def _lambda(s):
  with np.errstate(divide="ignore"):
    return np.log(1.0 - s) - np.log(s)


def _bh2(s_t: float, s_0: float):
  """(A, Bm, K, h, h_phi_1) of one UniPC bh2 update from sigma s_0 to s_t (predict x0)."""
  h = _lambda(s_t) - _lambda(s_0)
  hh = -h
  h_phi_1 = np.expm1(hh)
  return s_t / s_0, -(1.0 - s_t) * h_phi_1, -(1.0 - s_t) * np.expm1(hh), h, hh, h_phi_1


def _rhos_c(hh: float, h_phi_1: float, rks: list[float]) -> np.ndarray:
  """Corrector weights: solve R rho = b (UniC-p, bh2)."""
  b_h = np.expm1(hh)
  h_phi_k = h_phi_1 / hh - 1.0
  factorial, rows, b = 1, [], []
  for i in range(1, len(rks) + 1):
    rows.append(np.power(rks, i - 1))
    b.append(h_phi_k * factorial / b_h)
    factorial *= i + 1
    h_phi_k = h_phi_k / hh - 1.0 / factorial
  if len(rks) == 1:
    return np.array([0.5])
  return np.linalg.solve(np.stack(rows), np.array(b))


def unipc(num_steps: int, shift: float = 12.0, solver_order: int = 2) -> Schedule:
  """diffusers UniPC (flow sigmas, bh2, predict x0, lower_order_final) as step tables."""
  if solver_order != 2:
    raise ValueError(f"only solver_order=2 (Wan's setting) is supported, got {solver_order}")
  s = timesteps_lib.shift(np.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, num_steps + 1)[:-1], shift)
  if abs(s[0] - 1.0) < 1e-6:
    s[0] -= 1e-6  # as diffusers: keeps log(sigma) finite
  timesteps = np.floor(s * NUM_TRAIN_TIMESTEPS)  # diffusers casts to int64
  s = s.astype(np.float32).astype(np.float64)  # diffusers keeps float32 sigmas
  sig = np.append(s, 0.0)
  orders = [min(solver_order, num_steps - i, i + 1) for i in range(num_steps)]
  corrector = np.zeros((num_steps, 4))
  predictor = np.zeros((num_steps, 4))
  for i in range(num_steps):
    if i > 0:  # UniC with the previous step's order: from sig[i-1] to sig[i]
      a, bm, k, h, hh, h_phi_1 = _bh2(sig[i], sig[i - 1])
      if orders[i - 1] == 1:
        rho = _rhos_c(hh, h_phi_1, [1.0])
        corrector[i] = [a, bm - k * rho[0], 0.0, k * rho[0]]
      else:
        rk = (_lambda(sig[i - 2]) - _lambda(sig[i - 1])) / h
        rho = _rhos_c(hh, h_phi_1, [rk, 1.0])
        corrector[i] = [a, bm - k * rho[0] / rk - k * rho[1], k * rho[0] / rk, k * rho[1]]
    a, bm, k, h, _, _ = _bh2(sig[i + 1], sig[i])
    if orders[i] == 1:
      predictor[i] = [a, bm, 0.0, 0.0]
    else:
      rk = (_lambda(sig[i - 1]) - _lambda(sig[i])) / h
      predictor[i] = [a, bm - 0.5 * k / rk, 0.5 * k / rk, 0.0]
  return _schedule(timesteps, s, corrector, predictor, True)


def _schedule(timesteps, sigmas, corrector, predictor, corrects: bool) -> Schedule:
  f32 = lambda a: np.asarray(a, np.float64).astype(np.float32)
  return Schedule(
    timesteps_N=f32(timesteps),
    sigmas_N=f32(sigmas),
    corrector_Nx4=f32(corrector),
    predictor_Nx4=f32(predictor),
    num_steps=len(timesteps),
    corrects=corrects,
  )


SCHEDULERS = {"euler": euler, "unipc": unipc}


def make(name: str, num_steps: int, shift: float, timesteps=()) -> Schedule:
  """The named schedule; explicit `timesteps` (Euler only) replace the evenly spaced ones."""
  if name not in SCHEDULERS:
    raise ValueError(f"unknown scheduler {name!r}, expected one of {sorted(SCHEDULERS)}")
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  if len(timesteps):
    if name != "euler":
      raise ValueError(
        f"sampler.timesteps walks Euler steps: scheduler must be 'euler', not {name!r}"
      )
    if len(timesteps) != num_steps:
      raise ValueError(
        f"sampler.timesteps lists {len(timesteps)} steps but {num_steps} are asked for"
      )
    return euler_at(timesteps, shift)
  return SCHEDULERS[name](num_steps, shift)
