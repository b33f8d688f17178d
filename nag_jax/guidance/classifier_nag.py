"""Classifier-based NAG (paper eq. 10): the score gains grad_x log p(t | x) from the estimator g_phi.

p(t | x) is modelled as a Gaussian likelihood of g_phi(x) around the scheduled level t (estimator units:
SiT t, DiT t / T) with width sigma, so grad_x log p = -(g_phi(x) - t) / sigma^2 grad_x g_phi(x), times
the guidance scale. The term enters the model output so that the implied score moves by exactly that:
  DiT (eps):     eps' = eps - sqrt(1 - abar_t) grad        (upstream `condition_score`)
  SiT (velocity): v' = v + (var_t / ratio_t) grad, with score(v) = (ratio_t v - x) / var_t
(ratio_t = alpha_t / alpha_t', var_t = sigma_t^2 - ratio_t sigma_t' sigma_t, `Path.score_from_velocity`).
Where alpha_t = 0 (SiT pure noise, t = 0) the velocity does not determine the score and no term is
added; restrict `classifier_nag_interval` if the steps just after it should be left alone as well.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from nag_jax.flow.paths import expand_t_like_x
from nag_jax.guidance.baselines import Schedule

EstimatorFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Estimator:
  """g_phi as the guidance sees it: `apply(params, x, y) -> (B,)` levels in estimator units."""
  apply: EstimatorFn
  params: Any


def estimator_target(t: jax.Array, schedule: Schedule) -> jax.Array:
  """The estimator's value for model time t: SiT t; DiT t / T (the g_phi regression target)."""
  return t / schedule.num_timesteps if schedule.family == "dit" else t


def log_likelihood(level: jax.Array, target: jax.Array, sigma: float) -> jax.Array:
  """log N(level; target, sigma^2) up to its constant: -(level - target)^2 / (2 sigma^2)."""
  return -0.5 * jnp.square((level - target) / sigma)


def log_likelihood_grad(estimator: Estimator, x: jax.Array, y: jax.Array, target: jax.Array,
                        sigma: float) -> jax.Array:
  """grad_x log p(target | x) for each sample (samples are independent, so the batch sum's gradient)."""
  def total(x):
    return jnp.sum(log_likelihood(estimator.apply(estimator.params, x, y), target, sigma))
  return jax.grad(total)(x)


def condition_output(out: jax.Array, x: jax.Array, t: jax.Array, grad: jax.Array, schedule: Schedule) -> jax.Array:
  """The model output (eps or velocity in the first x.shape[-1] channels) whose score is score + grad."""
  c = x.shape[-1]
  if schedule.family == "dit":
    s = expand_t_like_x(schedule.coefficients(t)[1], x)
    head = out[..., :c] - s * grad
  else:
    te = expand_t_like_x(t, x)
    alpha, d_alpha = schedule.path.alpha(te)
    sigma, d_sigma = schedule.path.sigma(te)
    ratio = alpha / d_alpha
    var = sigma ** 2 - ratio * d_sigma * sigma
    head = out[..., :c] + jnp.where(alpha > 0, var / jnp.where(alpha > 0, ratio, 1.0), 0.0) * grad
  return jnp.concatenate([head, out[..., c:]], axis=-1)


def classifier_nag(out: jax.Array, x: jax.Array, t: jax.Array, y: jax.Array, estimator: Estimator,
                   schedule: Schedule, scale: float, sigma: float) -> jax.Array:
  """The guided output plus `scale` times the classifier-NAG score term at the scheduled time t."""
  grad = scale * log_likelihood_grad(estimator, x, y, estimator_target(t, schedule), sigma)
  return condition_output(out, x, t, grad, schedule)
