"""SiT probability-flow ODE samplers (official `sample_ode`): fixed grids as `lax.scan`, dopri5 via diffrax.

Noise (t0) to data (t1) on float32 `linspace(t0, t1, num_steps)`: "euler", "heun2" (trapezoid RK2) and
"midpoint" step exactly on the grid as torchdiffeq does; "dopri5" is adaptive (atol/rtol), the grid
then only marks the trajectory output points.
"""
from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.flow import transport as tr
from nag_jax.guidance import segments as seg
from nag_jax.sampling import common
from nag_jax.errors import UserError

ODE_SAMPLERS = ("euler", "heun2", "midpoint", "dopri5")


def ode_time_grid(transport: tr.Transport, num_steps: int = 50) -> np.ndarray:
  """float32 `linspace(t0, t1, num_steps)` on the sampling interval ([0, 1] for Linear/GVP)."""
  if num_steps < 2:
    raise UserError(f"num_steps must be >= 2 (grid points), got {num_steps}")
  t0, t1 = tr.check_interval(transport, sde=False, sampling=True)
  return common.linspace_f32(t0, t1, num_steps)


def ode_noise_levels(transport: tr.Transport, num_steps: int = 50) -> np.ndarray:
  """Static noise fraction 1 - t at the start of each fixed-grid step (num_steps - 1 of them)."""
  return 1.0 - ode_time_grid(transport, num_steps)[:-1].astype(np.float64)


def sample_ode(transport: tr.Transport, denoise: seg.DenoiseSpec, x: jax.Array, *,
               num_steps: int = 50, method: str = "dopri5", atol: float = 1e-6, rtol: float = 1e-3,
               max_steps: int = 4096, return_trajectory: bool = False) -> common.SampleOutput:
  """Solves dx/dt = denoise(x, t) from noise x to t1; trajectory = states at grid[1:].

  Fixed grids accept segments over their num_steps - 1 steps. dopri5 needs one callable, starts with a
  trial step of 0.01 (t1 - t0) and reports nfe = 6 * (accepted + rejected steps) + 1 (FSAL).
  """
  common.check_choice("ODE sampler", method, ODE_SAMPLERS)
  grid = ode_time_grid(transport, num_steps)
  if method == "dopri5":
    return _dopri5(denoise, x, grid, atol, rtol, max_steps, return_trajectory)
  batch = x.shape[:1]

  def step(fn, x, s):
    t0, dt = jnp.broadcast_to(s["t0"], batch), s["dt"]
    f0 = fn(x, t0)
    if method == "euler":
      x = x + dt * f0
    elif method == "midpoint":
      half = 0.5 * dt
      x = x + dt * fn(x + f0 * half, t0 + half)
    else:  # heun2: trapezoid on the step's two ends
      x = x + dt * (0.5 * f0 + 0.5 * fn(x + dt * f0, jnp.broadcast_to(s["t1"], batch)))
    return x, (x if return_trajectory else None)

  xs = {"t0": grid[:-1], "t1": grid[1:], "dt": grid[1:] - grid[:-1]}
  segments = seg.as_segments(denoise, num_steps - 1)
  x, trajectory = seg.scan_segments(step, x, xs, segments, seg.state_cell(segments, x))
  return common.SampleOutput(x, trajectory, (num_steps - 1) * (1 if method == "euler" else 2))


def _dopri5(denoise, x, grid, atol, rtol, max_steps, return_trajectory):
  """Adaptive Dormand-Prince 5(4) from grid[0] to grid[-1] through `diffrax.diffeqsolve`."""
  segments = seg.as_segments(denoise, len(grid) - 1)
  if len(segments) != 1:
    raise UserError("dopri5 is adaptive and takes one denoise callable, not several segments")
  denoise = segments[0][2]
  batch = x.shape[:1]
  term = diffrax.ODETerm(lambda t, y, args: denoise(y, jnp.full(batch, t, y.dtype)))
  saveat = diffrax.SaveAt(ts=grid[1:]) if return_trajectory else diffrax.SaveAt(t1=True)
  t0, t1 = float(grid[0]), float(grid[-1])
  sol = diffrax.diffeqsolve(term, diffrax.Dopri5(), t0=t0, t1=t1, dt0=0.01 * (t1 - t0),
                            y0=x, saveat=saveat, max_steps=max_steps,
                            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol))
  nfe = 6 * sol.stats["num_steps"] + 1
  return common.SampleOutput(sol.ys[-1], sol.ys if return_trajectory else None, nfe)
