"""Exposure-bias baselines of the paper's Table 5 as denoiser-level terms: Epsilon Scaling and Time Shift.

Both read the model's forward process from its family's `nag_jax.process.Process` (the coefficients
(a_t, s_t) of x_t = a_t x0 + s_t eps at the model's own time t, and its trained range).

- Epsilon Scaling (Ning et al. 2023a, uniform schedule): the network output (DiT eps, SiT velocity) is
  divided by lambda = 1 + eps_scaling at every step in its interval; variance channels are untouched.
- Time Shift (Li et al. 2023): the network is conditioned on the time t' of a window around the scheduled
  t whose forward variance a_t'^2 v_data + s_t'^2 is closest to the state's per-sample variance; the
  sampler's update keeps the scheduled coefficients. The window is a half-width in noise fraction with
  candidates every 1/T (T = 1000: DiT's every original timestep), nearest-to-t first on ties; v_data
  (`time_shift_data_var`) defaults to 0, i.e. matching 1 - abar_t' (DDPM) or s_t'^2.
- Input Perturbation (Ning et al. 2023b) is training-time: `objective.input_perturbation` (gamma) in the
  training config builds x_t from eps + gamma xi and regresses eps (`nag_jax/training/objectives.py`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.process import Process

RESOLUTION = 1000  # Time Shift candidates per unit of noise fraction


def eps_scale(out: jax.Array, eps_scaling: float, latent_channels: int) -> jax.Array:
  """Divides the first `latent_channels` (eps or velocity) by 1 + eps_scaling; other channels pass."""
  c = latent_channels
  return jnp.concatenate([out[..., :c] / (1 + eps_scaling), out[..., c:]], axis=-1)


def time_shift(x: jax.Array, t: jax.Array, window: float, process: Process,
               data_var: float = 0.0) -> jax.Array:
  """(B,) shifted model times: the candidate within +-window (noise fraction) of t that best matches Var(x)."""
  k = int(round(window * RESOLUTION))
  # Offsets 0, -1, +1, -2, +2, ...: argmin takes the first minimum, i.e. the candidate nearest t.
  order = np.stack([-np.arange(k + 1), np.arange(k + 1)], axis=1).reshape(-1)[1:]
  step = process.time_per_noise / RESOLUTION  # one candidate towards noise (+nu)
  lo, hi = process.time_range
  cand = jnp.clip(t[:, None] + step * jnp.asarray(order, jnp.float32), lo, hi)
  a, s = process.coefficients(cand)
  expected = a ** 2 * data_var + s ** 2
  var = jnp.var(x.reshape(x.shape[0], -1), axis=1)
  best = jnp.argmin(jnp.abs(var[:, None] - expected), axis=1)
  return jnp.take_along_axis(cand, best[:, None], axis=1)[:, 0]
