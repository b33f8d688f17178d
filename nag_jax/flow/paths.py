"""SiT interpolation paths (official `transport/path.py`): x_t = alpha_t x1 + sigma_t x0.

Code convention, as upstream: t = 0 is noise (x0), t = 1 is data (x1). `t` arguments are (B,) or
scalars; they are broadcast against NHWC `x`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.errors import UserError

PATH_TYPES = ("Linear", "GVP", "VP")
# Upstream spells the last key "inccreasing-decreasing" (a typo that makes the CLI value unusable).
DIFFUSION_FORMS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")


def expand_t_like_x(t: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes (B,) (or scalar) t to broadcast against x with batch first."""
  t = jnp.asarray(t)
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


@dataclasses.dataclass(frozen=True)
class Path:
  """One of the official coupling plans: Linear (ICPlan), GVP (GVPCPlan) or VP (VPCPlan)."""
  kind: str = "Linear"
  sigma_min: float = 0.1  # VP only
  sigma_max: float = 20.0  # VP only

  def __post_init__(self):
    if self.kind not in PATH_TYPES:
      raise UserError(f"unknown path type {self.kind!r}; expected one of {PATH_TYPES}")

  def _log_mean_coeff(self, t):
    return -0.25 * (1 - t) ** 2 * (self.sigma_max - self.sigma_min) - 0.5 * (1 - t) * self.sigma_min

  def _d_log_mean_coeff(self, t):
    return 0.5 * (1 - t) * (self.sigma_max - self.sigma_min) + 0.5 * self.sigma_min

  def alpha(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Data coefficient alpha_t and its derivative (elementwise in t)."""
    if self.kind == "Linear":
      return t, jnp.ones_like(t)
    if self.kind == "GVP":
      return jnp.sin(t * np.pi / 2), np.pi / 2 * jnp.cos(t * np.pi / 2)
    a = jnp.exp(self._log_mean_coeff(t))
    return a, a * self._d_log_mean_coeff(t)

  def sigma(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Noise coefficient sigma_t and its derivative (elementwise in t)."""
    if self.kind == "Linear":
      return 1 - t, -jnp.ones_like(t)
    if self.kind == "GVP":
      return jnp.cos(t * np.pi / 2), -np.pi / 2 * jnp.sin(t * np.pi / 2)
    p = 2 * self._log_mean_coeff(t)
    s = jnp.sqrt(1 - jnp.exp(p))
    return s, jnp.exp(p) * (2 * self._d_log_mean_coeff(t)) / (-2 * s)

  def d_alpha_alpha_ratio(self, t: jax.Array) -> jax.Array:
    """alpha_t' / alpha_t in the numerically stable form of each plan."""
    if self.kind == "Linear":
      return 1 / t
    if self.kind == "GVP":
      return np.pi / (2 * jnp.tan(t * np.pi / 2))
    return self._d_log_mean_coeff(t)

  def drift(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(drift, diffusion) of the path's score-parametrized SDE (`compute_drift` upstream)."""
    t = expand_t_like_x(t, x)
    if self.kind == "VP":
      beta = self.sigma_min + (1 - t) * (self.sigma_max - self.sigma_min)
      return -0.5 * beta * x, beta / 2
    ratio = self.d_alpha_alpha_ratio(t)
    sigma, d_sigma = self.sigma(t)
    return -ratio * x, ratio * sigma ** 2 - sigma * d_sigma

  def diffusion(self, x: jax.Array, t: jax.Array, form: str = "SBDM", norm: float = 1.0) -> jax.Array:
    """SDE diffusion coefficient w_t of the given form (`compute_diffusion` upstream)."""
    te = expand_t_like_x(t, x)
    if form == "constant":
      return jnp.full_like(te, norm)
    if form == "SBDM":
      return norm * self.drift(x, t)[1]
    if form == "sigma":
      return norm * self.sigma(te)[0]
    if form == "linear":
      return norm * (1 - te)
    if form == "decreasing":
      return 0.25 * (norm * jnp.cos(np.pi * te) + 1) ** 2
    if form == "increasing-decreasing":
      return norm * jnp.sin(np.pi * te) ** 2
    raise UserError(f"unknown diffusion form {form!r}; expected one of {DIFFUSION_FORMS}")

  def score_from_velocity(self, velocity: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    """Score of p_t from a velocity prediction (`get_score_from_velocity`; Linear: (t v - x)/(1-t))."""
    t = expand_t_like_x(t, x)
    alpha, d_alpha = self.alpha(t)
    sigma, d_sigma = self.sigma(t)
    ratio = alpha / d_alpha
    var = sigma ** 2 - ratio * d_sigma * sigma
    return (ratio * velocity - x) / var

  def plan(self, t: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x_t, u_t): the interpolant between noise x0 and data x1 and its target velocity."""
    t = expand_t_like_x(t, x1)
    alpha, d_alpha = self.alpha(t)
    sigma, d_sigma = self.sigma(t)
    return alpha * x1 + sigma * x0, d_alpha * x1 + d_sigma * x0
