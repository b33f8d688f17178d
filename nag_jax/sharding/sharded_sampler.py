"""The sharded sampler: one `jax.jit` with explicit shardings around `build_sampler(..., jit=False)`."""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nag_jax import checks
from nag_jax.sharding.rules import RULES, batch_sharding, check_batch, replicated


def shard_sampler(sample_fn: Callable, mesh: Mesh, param_shardings: Any, *,
                  parent_shardings: Any = None) -> Callable:
  """fn(params, key, labels, decoder_params=None, parent_params=None, estimator_params=None, noises=None).

  Returns build_sampler's dict, compiled once. Params (and the Domain-Guidance parent) follow the
  logical rules, labels and every NHWC output (latents, images, trajectory) are split over the batch
  axes, the VAE, g_phi and injected noises are replicated. The k*B guidance branch batch inherits the
  split of the labels and the initial noise. Concrete labels outside build_sampler's classes are refused
  (UserError) when this process holds all of them; a multi-process global array is checked by its feeders.
  """
  rep = replicated(mesh)
  batch_axes = dict(RULES)["batch"]

  def placed(x: jax.Array) -> NamedSharding:
    if np.ndim(x) < 4:
      return rep
    return NamedSharding(mesh, P(*([None] * (np.ndim(x) - 4)), batch_axes))

  def positional(params, key, labels, decoder_params, parent_params, estimator_params, noises):
    out = sample_fn(params, key, labels, decoder_params=decoder_params, parent_params=parent_params,
                    estimator_params=estimator_params, noises=noises)
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, placed(x)), out)

  compiled = jax.jit(positional, in_shardings=(param_shardings, rep, batch_sharding(mesh), rep,
                                               rep if parent_shardings is None else parent_shardings, rep, rep),
                     compiler_options=getattr(sample_fn, "compiler_options", None))

  def sample(params, key, labels, decoder_params=None, parent_params=None, estimator_params=None, noises=None):
    check_batch(mesh, labels.shape[0])
    if hasattr(sample_fn, "num_classes") and getattr(labels, "is_fully_addressable", True):
      checks.check_labels(labels, sample_fn.num_classes)  # values this process can see, before tracing
    return compiled(params, key, labels, decoder_params, parent_params, estimator_params, noises)

  sample.jitted = compiled  # positional (params, key, labels, decoder, parent, estimator, noises): for AOT `lower`
  return sample
