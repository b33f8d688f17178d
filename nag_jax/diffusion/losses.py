"""The variational-bound term that trains DiT's learned variance, and its pieces (the eps MSE is the process's)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.diffusion import gaussian_diffusion as gd

def mean_flat(x: jax.Array) -> jax.Array:
  """Mean over every axis but the batch axis."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array) -> jax.Array:
  """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
  """The tanh approximation of the standard normal CDF used upstream."""
  return 0.5 * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: jax.Array, means: jax.Array,
                                        log_scales: jax.Array) -> jax.Array:
  """Log-probability (nats) of x in [-1, 1] under a Gaussian discretized to 256 bins, elementwise."""
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vb_terms_bpd(diffusion: gd.GaussianDiffusion, model_out: jax.Array, x0: jax.Array,
                 x_t: jax.Array, t: jax.Array) -> jax.Array:
  """Per-example VB term in bits: KL(q(x_{t-1}|x_t,x_0) || p) for t > 0, decoder NLL at t = 0."""
  true_mean, _, true_log_var = gd.q_posterior_mean_variance(diffusion, x0, x_t, t)
  out = gd.p_mean_variance(diffusion, model_out, x_t, t, clip_denoised=False)
  kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / np.log(2.0)
  nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
  nll = mean_flat(nll) / np.log(2.0)
  return jnp.where(t == 0, nll, kl)
