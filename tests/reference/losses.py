"""Test oracles: the official per-example training losses (DiT `training_losses`, SiT transport), in JAX.

Transcribed from the official code as standalone functions, so the process layer's objectives
(`nag_jax/process/`) can be checked against them; they are not part of the package.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from nag_jax.diffusion import gaussian_diffusion as gd
from nag_jax.diffusion.losses import mean_flat, vb_terms_bpd
from nag_jax.flow.paths import Path

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def diffusion_training_losses(diffusion: gd.GaussianDiffusion, model_fn: ModelFn, x0: jax.Array,
                              t: jax.Array, noise: jax.Array) -> dict[str, jax.Array]:
  """Per-example losses {'loss', 'mse', 'vb'} of the official MSE loss type (x0 NHWC, t (B,) int).

  `model_fn(x_t, t_model)` gets the original timesteps as float32. With learned-range variance the
  VB term sees a stop-gradient eps, so it trains only the variance channels; 'vb' is 0 otherwise.
  """
  x_t = gd.q_sample(diffusion, x0, t, noise)
  out = model_fn(x_t, gd.model_timesteps(diffusion, t))
  c = x0.shape[-1]
  eps = out[..., :c]
  if diffusion.variance_type == "learned_range":
    frozen = jnp.concatenate([jax.lax.stop_gradient(eps), out[..., c:]], axis=-1)
    vb = vb_terms_bpd(diffusion, frozen, x0, x_t, t)
  else:
    vb = jnp.zeros(x0.shape[:1], x0.dtype)
  mse = mean_flat((noise - eps) ** 2)
  return {"loss": mse + vb, "mse": mse, "vb": vb}


def flow_training_losses(path: Path, model_fn: ModelFn, x1: jax.Array, t: jax.Array,
                         noise: jax.Array) -> dict[str, jax.Array]:
  """Per-example unweighted velocity MSE {'loss', 'pred'}; x1 data (NHWC), t (B,) in [t0, t1), noise x0.

  Draw t uniformly on `check_interval(transport)` ([0, 1) for Linear/GVP).
  """
  x_t, u_t = path.plan(t, noise, x1)
  pred = model_fn(x_t, t)
  return {"loss": jnp.mean((pred - u_t) ** 2, axis=tuple(range(1, x1.ndim))), "pred": pred}
