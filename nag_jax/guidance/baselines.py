"""Exposure-bias baselines of the paper's Table 5 as denoiser-level terms: Epsilon Scaling and Time Shift.

Also the model's forward process as these terms (and classifier-based NAG) need it: `Schedule` gives the
data and noise coefficients (a_t, s_t) of x_t = a_t x0 + s_t eps at the model's own time t (DiT: original
timestep 0..T-1 of the training diffusion; SiT: t in [0, 1], 1 = data).

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

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.diffusion.gaussian_diffusion import create_diffusion
from nag_jax.flow.paths import Path

FAMILIES = ("dit", "sit")
RESOLUTION = 1000  # Time Shift candidates per unit of noise fraction


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """The forward process at the model's time: DiT (float64 base abar per timestep) or SiT (a path)."""
  family: str
  alphas_cumprod: np.ndarray | None = None
  path: Path | None = None

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
    if (self.family == "dit") != (self.alphas_cumprod is not None) or (self.family == "sit") != (self.path is not None):
      raise ValueError("a DiT schedule needs alphas_cumprod (and no path); a SiT schedule a path")

  @classmethod
  def create(cls, family: str, *, path_type: str = "Linear", noise_schedule: str = "linear",
             diffusion_steps: int = 1000) -> "Schedule":
    """The official forward process of `family`: DDPM betas (linear, 1000 steps) or a SiT path."""
    if family == "dit":
      return cls("dit", alphas_cumprod=create_diffusion("", noise_schedule, diffusion_steps=diffusion_steps)
                 .alphas_cumprod)
    return cls(family, path=Path(path_type))

  @property
  def num_timesteps(self) -> int:
    """T of the DiT diffusion (DiT only; the estimator's DiT target is t / T)."""
    return len(self.alphas_cumprod)

  @property
  def time_range(self) -> tuple[float, float]:
    """The model's trained time interval (DiT 0..T-1, SiT [0, 1])."""
    return (0.0, float(self.num_timesteps - 1)) if self.family == "dit" else (0.0, 1.0)

  def coefficients(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(a_t, s_t), elementwise in t (DiT t is rounded to the nearest integer timestep)."""
    if self.family == "dit":  # float64 square roots cast to float32, as `q_sample` gathers them
      index = jnp.rint(t).astype(jnp.int32)
      abar = self.alphas_cumprod
      return (jnp.asarray(np.sqrt(abar).astype(np.float32))[index],
              jnp.asarray(np.sqrt(1 - abar).astype(np.float32))[index])
    return self.path.alpha(t)[0], self.path.sigma(t)[0]


def eps_scale(out: jax.Array, eps_scaling: float, latent_channels: int) -> jax.Array:
  """Divides the first `latent_channels` (eps or velocity) by 1 + eps_scaling; other channels pass."""
  c = latent_channels
  return jnp.concatenate([out[..., :c] / (1 + eps_scaling), out[..., c:]], axis=-1)


def time_shift(x: jax.Array, t: jax.Array, window: float, schedule: Schedule,
               data_var: float = 0.0) -> jax.Array:
  """(B,) shifted model times: the candidate within +-window (noise fraction) of t that best matches Var(x)."""
  k = int(round(window * RESOLUTION))
  # Offsets 0, -1, +1, -2, +2, ...: argmin takes the first minimum, i.e. the candidate nearest t.
  order = np.stack([-np.arange(k + 1), np.arange(k + 1)], axis=1).reshape(-1)[1:]
  step = 1.0 if schedule.family == "dit" else -1.0 / RESOLUTION  # one candidate towards noise (+nu)
  lo, hi = schedule.time_range
  cand = jnp.clip(t[:, None] + step * jnp.asarray(order, jnp.float32), lo, hi)
  a, s = schedule.coefficients(cand)
  expected = a ** 2 * data_var + s ** 2
  var = jnp.var(x.reshape(x.shape[0], -1), axis=1)
  best = jnp.argmin(jnp.abs(var[:, None] - expected), axis=1)
  return jnp.take_along_axis(cand, best[:, None], axis=1)[:, 0]
