"""SiT's process: an interpolation path x_t = alpha_t x1 + sigma_t x0 at t in [0, 1] (1 = data), velocity.

nu = 1 - t; the network predicts the velocity (the sigma half of its last layer is dropped, as the
official forward does); g_phi regresses t; the pseudo level is 1.001; the samplers are the SDE and the
probability-flow ODE of `transport`; training is the velocity MSE with t uniform on the train interval.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax import flow
from nag_jax.diffusion.losses import mean_flat
from nag_jax.flow.paths import expand_t_like_x
from nag_jax.process.base import Process


class TransportProcess(Process):
  """A SiT model's transport (Linear, GVP or VP path with velocity prediction)."""
  family = "sit"
  default_pseudo_level = 1.001
  sampler_methods = ("sde", "ode")

  def __init__(self, *, path_type: str = "Linear", **_other_families: object):
    self.transport = flow.create_transport(path_type)

  @property
  def path(self) -> flow.Path:
    return self.transport.path

  @property
  def time_range(self) -> tuple[float, float]:
    return (0.0, 1.0)

  @property
  def time_per_noise(self) -> float:
    """-1: t runs from noise (0) to data (1)."""
    return -1.0

  def coefficients(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.path.alpha(t)[0], self.path.sigma(t)[0]

  def level_to_time(self, nu: np.ndarray) -> np.ndarray:
    return 1 - np.asarray(nu, np.float64)

  def estimator_target(self, t: jax.Array) -> jax.Array:
    return t

  def estimate_to_level(self, g: np.ndarray) -> np.ndarray:
    return 1 - g

  def add_score(self, out: jax.Array, x: jax.Array, t: jax.Array, grad: jax.Array) -> jax.Array:
    """v' = v + (var_t / ratio_t) grad, score(v) = (ratio_t v - x) / var_t; no term where alpha_t = 0."""
    c = x.shape[-1]
    te = expand_t_like_x(t, x)
    alpha, d_alpha = self.path.alpha(te)
    sigma, d_sigma = self.path.sigma(te)
    ratio = alpha / d_alpha
    var = sigma ** 2 - ratio * d_sigma * sigma
    head = out[..., :c] + jnp.where(alpha > 0, var / jnp.where(alpha > 0, ratio, 1.0), 0.0) * grad
    return jnp.concatenate([head, out[..., c:]], axis=-1)

  @classmethod
  def output_channels(cls, in_channels: int, learn_sigma: bool) -> int:
    """The velocity only."""
    return in_channels

  def draw_time(self, key: jax.Array, batch: int) -> jax.Array:
    """t uniform on the transport's training interval ([0, 1) for Linear/GVP)."""
    t0, t1 = flow.check_interval(self.transport)
    return jax.random.uniform(key, (batch,), jnp.float32, t0, t1)

  def noisy_input(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.path.plan(t, noise, x0)[0], t

  def losses(self, out: jax.Array, x0: jax.Array, x_t: jax.Array, t: jax.Array,
             noise: jax.Array) -> dict[str, jax.Array]:
    """Unweighted velocity MSE against the path's u_t."""
    _, u_t = self.path.plan(t, noise, x0)
    return {"loss": mean_flat(jnp.square(out - u_t))}
