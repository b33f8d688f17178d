"""Classifier-based NAG (paper eq. 10): the score gains grad_x log p(t | x) from the estimator g_phi.

p(t | x) is modelled as a Gaussian likelihood of g_phi(x) around the scheduled level t (estimator units:
SiT t, DiT t / T) with width sigma, so grad_x log p = -(g_phi(x) - t) / sigma^2 grad_x g_phi(x), times
the guidance scale. The term enters the model output so that the implied score moves by exactly that;
the family's process says how (`Process.add_score`: DiT eps' = eps - sqrt(1 - abar_t) grad; SiT adds
to the velocity, and nothing where alpha_t = 0, i.e. at SiT pure noise: restrict
`classifier_nag_interval` if the steps just after it should be left alone as well). The estimator
units are the process's `estimator_target`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from nag_jax.process import Process

EstimatorFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Estimator:
  """g_phi as the guidance sees it: `apply(params, x, y) -> (B,)` levels in estimator units."""
  apply: EstimatorFn
  params: Any


def log_likelihood(level: jax.Array, target: jax.Array, sigma: float) -> jax.Array:
  """log N(level; target, sigma^2) up to its constant: -(level - target)^2 / (2 sigma^2)."""
  return -0.5 * jnp.square((level - target) / sigma)


def log_likelihood_grad(estimator: Estimator, x: jax.Array, y: jax.Array, target: jax.Array,
                        sigma: float) -> jax.Array:
  """grad_x log p(target | x) for each sample (samples are independent, so the batch sum's gradient)."""
  def total(x):
    return jnp.sum(log_likelihood(estimator.apply(estimator.params, x, y), target, sigma))
  return jax.grad(total)(x)


def classifier_nag(out: jax.Array, x: jax.Array, t: jax.Array, y: jax.Array, estimator: Estimator,
                   process: Process, scale: float, sigma: float) -> jax.Array:
  """The guided output plus `scale` times the classifier-NAG score term at the scheduled time t."""
  grad = scale * log_likelihood_grad(estimator, x, y, process.estimator_target(t), sigma)
  return process.add_score(out, x, t, grad)
