"""DiT's process: the DDPM forward diffusion at the original timestep t in 0..T-1 (T = 1000), eps + variance.

nu = t / (T - 1); the network predicts eps (and, with learn_sigma, the learned-range variance channels);
g_phi regresses t / T; the pseudo level is 1001; the samplers are DDPM ancestral and DDIM on a respaced
diffusion; training is eps MSE plus the variational bound on the variance channels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.diffusion import gaussian_diffusion as gd
from nag_jax.diffusion.losses import mean_flat, vb_terms_bpd
from nag_jax.flow.paths import expand_t_like_x
from nag_jax.process.base import Process


class DDPMProcess(Process):
  """A DiT model's Gaussian diffusion (float64 schedule arrays, cast to float32 where gathered)."""
  family = "dit"
  default_pseudo_level = 1001.0
  sampler_methods = ("ddpm", "ddim")

  def __init__(self, *, noise_schedule: str = "linear", diffusion_steps: int = 1000, learn_sigma: bool = True,
               **_other_families: object):
    self.noise_schedule, self.learn_sigma = noise_schedule, learn_sigma
    self.diffusion = gd.create_diffusion("", noise_schedule=noise_schedule, learn_sigma=learn_sigma,
                                         diffusion_steps=diffusion_steps)

  @property
  def num_timesteps(self) -> int:
    """T of the training diffusion."""
    return self.diffusion.num_timesteps

  @property
  def time_range(self) -> tuple[float, float]:
    return (0.0, float(self.num_timesteps - 1))

  @property
  def time_per_noise(self) -> float:
    """T: one original timestep per 1/T of noise fraction."""
    return float(self.num_timesteps)

  def coefficients(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sqrt abar_t, sqrt(1 - abar_t)) at t rounded to the nearest integer timestep, as `q_sample` gathers."""
    index = jnp.rint(t).astype(jnp.int32)
    abar = self.diffusion.alphas_cumprod
    return (jnp.asarray(np.sqrt(abar).astype(np.float32))[index],
            jnp.asarray(np.sqrt(1 - abar).astype(np.float32))[index])

  def level_to_time(self, nu: np.ndarray) -> np.ndarray:
    """The nearest integer timestep."""
    return np.rint(np.asarray(nu, np.float64) * (self.num_timesteps - 1))

  def estimator_target(self, t: jax.Array) -> jax.Array:
    return t / self.num_timesteps

  def estimate_to_level(self, g: np.ndarray) -> np.ndarray:
    return g * self.num_timesteps / (self.num_timesteps - 1)

  def add_score(self, out: jax.Array, x: jax.Array, t: jax.Array, grad: jax.Array) -> jax.Array:
    """eps' = eps - sqrt(1 - abar_t) grad (upstream `condition_score`)."""
    c = x.shape[-1]
    s = expand_t_like_x(self.coefficients(t)[1], x)
    return jnp.concatenate([out[..., :c] - s * grad, out[..., c:]], axis=-1)

  @classmethod
  def output_channels(cls, in_channels: int, learn_sigma: bool) -> int:
    """eps, plus as many variance channels with learn_sigma."""
    return 2 * in_channels if learn_sigma else in_channels

  def respaced(self, respacing: str) -> gd.GaussianDiffusion:
    """The sampling diffusion on the kept timesteps of `respacing` ("250", "ddim50", ...)."""
    return gd.create_diffusion(respacing, noise_schedule=self.noise_schedule, learn_sigma=self.learn_sigma,
                               diffusion_steps=self.num_timesteps)

  def draw_time(self, key: jax.Array, batch: int) -> jax.Array:
    """Integer timesteps, uniform on 0..T-1."""
    return jax.random.randint(key, (batch,), 0, self.num_timesteps)

  def noisy_input(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> tuple[jax.Array, jax.Array]:
    return gd.q_sample(self.diffusion, x0, t, noise), gd.model_timesteps(self.diffusion, t)

  def losses(self, out: jax.Array, x0: jax.Array, x_t: jax.Array, t: jax.Array,
             noise: jax.Array) -> dict[str, jax.Array]:
    """eps MSE, plus the VB term (through a stop-gradient eps) that trains the learned variance."""
    c = x0.shape[-1]
    mse = mean_flat(jnp.square(noise - out[..., :c]))
    if self.diffusion.variance_type != "learned_range":
      return {"loss": mse, "mse": mse}
    frozen = jnp.concatenate([jax.lax.stop_gradient(out[..., :c]), out[..., c:]], axis=-1)
    vb = vb_terms_bpd(self.diffusion, frozen, x0, x_t, t)
    return {"loss": mse + vb, "mse": mse, "vb": vb}
