"""SiT SDE samplers (official `sample_sde`): Euler-Maruyama or Heun steps as a `lax.scan`, last step.

The drift is v + w_t * score(v) from ONE velocity evaluation per drift (upstream evaluates the model
twice for the same value). Defaults are the `sample.py` CLI ones: diffusion form "sigma", norm 1,
last step "Mean" of size 0.04, 250 grid points.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.flow import paths
from nag_jax.flow import transport as tr
from nag_jax.guidance import segments as seg
from nag_jax.sampling import common
from nag_jax.errors import UserError

SDE_SAMPLERS = ("Euler", "Heun")
LAST_STEPS = ("Mean", "Tweedie", "Euler", None)


def sde_time_grid(transport: tr.Transport, num_steps: int = 250, *, diffusion_form: str = "sigma",
                  last_step: Optional[str] = "Mean",
                  last_step_size: float = 0.04) -> tuple[np.ndarray, float]:
  """(float32 `linspace(t0, t1, num_steps)`, t1): the noisy steps run over grid[:-1], then the last step."""
  common.check_choice("diffusion form", diffusion_form, paths.DIFFUSION_FORMS)
  common.check_choice("last step", last_step, LAST_STEPS)
  if num_steps < 2:
    raise UserError(f"num_steps must be >= 2 (grid points), got {num_steps}")
  if last_step is None:
    last_step_size = 0.0
  elif not 0.0 < last_step_size < 1.0:
    raise UserError(f"last_step_size must be in (0, 1), got {last_step_size}")
  t0, t1 = tr.check_interval(transport, sde=True, diffusion_form=diffusion_form, sampling=True,
                             last_step_size=last_step_size)
  return common.linspace_f32(t0, t1, num_steps), t1


def sde_noise_levels(transport: tr.Transport, num_steps: int = 250, *, diffusion_form: str = "sigma",
                     last_step: Optional[str] = "Mean", last_step_size: float = 0.04) -> np.ndarray:
  """Static noise fraction 1 - t of each denoising step (noisy steps, then the last step if any)."""
  grid, t1 = sde_time_grid(transport, num_steps, diffusion_form=diffusion_form, last_step=last_step,
                           last_step_size=last_step_size)
  ts = grid[:-1] if last_step is None else np.append(grid[:-1], np.float32(t1))
  return 1.0 - ts.astype(np.float64)


def sample_sde(transport: tr.Transport, denoise: seg.DenoiseSpec, x: jax.Array,
               key: Optional[jax.Array] = None, *, num_steps: int = 250, method: str = "Euler",
               diffusion_form: str = "sigma", diffusion_norm: float = 1.0,
               last_step: Optional[str] = "Mean", last_step_size: float = 0.04,
               noises: Optional[jax.Array] = None,
               return_trajectory: bool = False) -> common.SampleOutput:
  """Integrates from noise x (t = t0) to data; denoise(x, t) returns the (guided) velocity.

  Noisy step k (of num_steps - 1) draws normal(fold_in(key, k)) unless `noises[k]` is injected
  (shape (num_steps - 1, *x.shape)). Segments index the denoising steps of `sde_noise_levels`.
  The trajectory holds the state after each noisy step, then after the last step (if any).
  """
  common.check_choice("SDE sampler", method, SDE_SAMPLERS)
  grid, t1 = sde_time_grid(transport, num_steps, diffusion_form=diffusion_form, last_step=last_step,
                           last_step_size=last_step_size)
  n_noisy = num_steps - 1
  segments = seg.as_segments(denoise, n_noisy + (last_step is not None))
  common.check_noises(noises, key, n_noisy, x)
  path, dt = transport.path, grid[1] - grid[0]
  sqrt_dt = np.sqrt(dt)
  batch = x.shape[:1]

  def drift(fn, x, t):  # (v + w_t * score(v), w_t) from one evaluation
    return tr.sde_drift(path, fn(x, t), x, t, diffusion_form=diffusion_form,
                        diffusion_norm=diffusion_norm)

  def step(fn, x, s):
    t = jnp.broadcast_to(s["t"], batch)
    dw = common.step_noise(key, s["k"], x, s.get("noise")) * sqrt_dt
    if method == "Euler":
      d, w = drift(fn, x, t)
      x = x + d * dt + jnp.sqrt(2 * w) * dw
    else:  # Heun: noise first, then a trapezoid on the drift (two evaluations)
      w = path.diffusion(x, t, diffusion_form, diffusion_norm)
      x_hat = x + jnp.sqrt(2 * w) * dw
      k1 = drift(fn, x_hat, t)[0]
      k2 = drift(fn, x_hat + dt * k1, t + dt)[0]
      x = x_hat + 0.5 * dt * (k1 + k2)
    return x, (x if return_trajectory else None)

  xs = {"k": np.arange(n_noisy, dtype=np.int32), "t": grid[:-1]}
  if noises is not None:
    xs["noise"] = noises
  cell = seg.state_cell(segments, x)
  x, trajectory = seg.scan_segments(step, x, xs, seg.clip_segments(segments, n_noisy), cell)
  nfe = n_noisy * (1 if method == "Euler" else 2)
  if last_step is not None:
    fn, t = seg.bind(seg.denoise_at(segments, n_noisy), cell), jnp.full(batch, t1, x.dtype)
    if last_step == "Mean":
      x = x + drift(fn, x, t)[0] * last_step_size
    elif last_step == "Euler":
      x = x + fn(x, t) * last_step_size
    else:  # Tweedie
      alpha, sigma = path.alpha(t)[0][0], path.sigma(t)[0][0]
      x = x / alpha + sigma ** 2 / alpha * path.score_from_velocity(fn(x, t), x, t)
    nfe += 1
    if return_trajectory:
      trajectory = jnp.concatenate([trajectory, x[None]])
  return common.SampleOutput(x, trajectory, nfe)
