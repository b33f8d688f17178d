"""DiT's Gaussian diffusion (eps prediction, learned-range variance, respacing) as pure functions.

As in the official `diffusion/` package, the schedule is float64 numpy computed at trace time and each
gathered coefficient is cast to float32 before the float32 arithmetic. Arrays are NHWC; `t` arguments
are respaced indices (equal to original timesteps for an unspaced diffusion).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.diffusion import respacing
from nag_jax.errors import UserError

NOISE_SCHEDULES = ("linear", "squaredcos_cap_v2")
VARIANCE_TYPES = ("learned_range", "fixed_large", "fixed_small")


def get_named_beta_schedule(name: str, num_steps: int) -> np.ndarray:
  """Float64 betas: "linear" (1e-4..0.02 rescaled by 1000/num_steps) or "squaredcos_cap_v2"."""
  if name == "linear":
    scale = 1000 / num_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
  if name == "squaredcos_cap_v2":
    alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999)
                     for i in range(num_steps)], dtype=np.float64)
  raise UserError(f"unknown noise schedule {name!r}; expected one of {NOISE_SCHEDULES}")


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianDiffusion:
  """A (respaced) diffusion: float64 schedule arrays and the respaced index -> original t map.

  Hashed by identity, so it can be a static argument of `jax.jit`.
  """
  betas: np.ndarray
  alphas_cumprod: np.ndarray
  alphas_cumprod_prev: np.ndarray
  sqrt_alphas_cumprod: np.ndarray
  sqrt_one_minus_alphas_cumprod: np.ndarray
  sqrt_recip_alphas_cumprod: np.ndarray
  sqrt_recipm1_alphas_cumprod: np.ndarray
  posterior_variance: np.ndarray
  posterior_log_variance_clipped: np.ndarray
  posterior_mean_coef1: np.ndarray
  posterior_mean_coef2: np.ndarray
  timestep_map: np.ndarray
  original_num_steps: int
  variance_type: str = "learned_range"

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])

  @classmethod
  def from_betas(cls, betas: np.ndarray, timestep_map: np.ndarray, original_num_steps: int,
                 variance_type: str = "learned_range") -> "GaussianDiffusion":
    """Derives every schedule array in float64 exactly as `GaussianDiffusion.__init__` upstream."""
    if variance_type not in VARIANCE_TYPES:
      raise UserError(f"unknown variance type {variance_type!r}; expected one of {VARIANCE_TYPES}")
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 2 or not ((betas > 0).all() and (betas <= 1).all()):
      raise UserError("betas must be a 1-D array of at least 2 values in (0, 1]")
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    return cls(
        betas=betas, alphas_cumprod=ac, alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=np.sqrt(ac), sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac), sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1),
        posterior_variance=post_var,
        posterior_log_variance_clipped=np.log(np.append(post_var[1], post_var[1:])),
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        timestep_map=np.asarray(timestep_map, dtype=np.int64),
        original_num_steps=int(original_num_steps), variance_type=variance_type)


def create_diffusion(timestep_respacing: Union[str, Sequence[int], None] = "",
                     noise_schedule: str = "linear", learn_sigma: bool = True,
                     sigma_small: bool = False, diffusion_steps: int = 1000) -> GaussianDiffusion:
  """The official `create_diffusion` (eps prediction): respaced betas rebuilt from the kept alpha-bars.

  `timestep_respacing` "" or None keeps all `diffusion_steps` (training); "250", "ddim50", "10,20".
  Without `learn_sigma` the variance is fixed (large, or small with `sigma_small`), as upstream.
  """
  base_ac = np.cumprod(1.0 - get_named_beta_schedule(noise_schedule, diffusion_steps))
  if timestep_respacing is None or timestep_respacing == "":
    timestep_respacing = [diffusion_steps]
  kept = np.array(sorted(respacing.space_timesteps(diffusion_steps, timestep_respacing)), dtype=np.int64)
  kept_ac = base_ac[kept]
  betas = 1 - kept_ac / np.append(1.0, kept_ac[:-1])
  variance = "learned_range" if learn_sigma else ("fixed_small" if sigma_small else "fixed_large")
  return GaussianDiffusion.from_betas(betas, kept, diffusion_steps, variance)


def extract(arr: np.ndarray, t: jax.Array, ndim: int) -> jax.Array:
  """`arr[t]` cast to float32, shaped to broadcast against an `ndim`-array whose batch axis is first."""
  v = jnp.asarray(np.asarray(arr, dtype=np.float32))[t]
  return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def model_timesteps(diffusion: GaussianDiffusion, t: jax.Array) -> jax.Array:
  """The original timesteps (float32) the model receives for respaced indices `t`."""
  return jnp.asarray(diffusion.timestep_map.astype(np.float32))[t]


def q_sample(diffusion: GaussianDiffusion, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Samples q(x_t | x_0) = sqrt(abar) x0 + sqrt(1 - abar) noise."""
  return (extract(diffusion.sqrt_alphas_cumprod, t, x0.ndim) * x0
          + extract(diffusion.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)


def q_posterior_mean_variance(diffusion: GaussianDiffusion, x0: jax.Array, x_t: jax.Array,
                              t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mean, variance and clipped log-variance of the posterior q(x_{t-1} | x_t, x_0)."""
  mean = (extract(diffusion.posterior_mean_coef1, t, x_t.ndim) * x0
          + extract(diffusion.posterior_mean_coef2, t, x_t.ndim) * x_t)
  return (mean, extract(diffusion.posterior_variance, t, x_t.ndim),
          extract(diffusion.posterior_log_variance_clipped, t, x_t.ndim))


def predict_xstart_from_eps(diffusion: GaussianDiffusion, x_t: jax.Array, t: jax.Array,
                            eps: jax.Array) -> jax.Array:
  """x0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps."""
  return (extract(diffusion.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
          - extract(diffusion.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps)


def predict_eps_from_xstart(diffusion: GaussianDiffusion, x_t: jax.Array, t: jax.Array,
                            x0: jax.Array) -> jax.Array:
  """Inverse of `predict_xstart_from_eps`."""
  return ((extract(diffusion.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x0)
          / extract(diffusion.sqrt_recipm1_alphas_cumprod, t, x_t.ndim))


def p_mean_variance(diffusion: GaussianDiffusion, model_out: jax.Array, x: jax.Array, t: jax.Array,
                    clip_denoised: bool = False) -> dict[str, jax.Array]:
  """p(x_{t-1} | x_t) from a model output: 'mean', 'variance', 'log_variance', 'pred_xstart'.

  With learned-range variance `model_out` has 2C channels (last axis): eps, then values v in [-1, 1]
  interpolating the log-variance between the clipped posterior one and log(beta). `clip_denoised`
  clamps x0 to [-1, 1] (the upstream loop default; DiT's `sample.py` passes False).
  """
  c = x.shape[-1]
  if diffusion.variance_type == "learned_range":
    if model_out.shape != x.shape[:-1] + (2 * c,):
      raise UserError(f"learned-range variance needs {2 * c} output channels, got {model_out.shape}")
    eps, var_values = model_out[..., :c], model_out[..., c:]
    min_log = extract(diffusion.posterior_log_variance_clipped, t, x.ndim)
    max_log = extract(np.log(diffusion.betas), t, x.ndim)
    frac = (var_values + 1) / 2
    log_var = frac * max_log + (1 - frac) * min_log
    var = jnp.exp(log_var)
  else:
    eps = model_out[..., :c]
    if diffusion.variance_type == "fixed_large":
      var_arr = np.append(diffusion.posterior_variance[1], diffusion.betas[1:])
      var, log_var = extract(var_arr, t, x.ndim), extract(np.log(var_arr), t, x.ndim)
    else:
      var = extract(diffusion.posterior_variance, t, x.ndim)
      log_var = extract(diffusion.posterior_log_variance_clipped, t, x.ndim)
    var, log_var = jnp.broadcast_to(var, x.shape), jnp.broadcast_to(log_var, x.shape)
  pred_xstart = predict_xstart_from_eps(diffusion, x, t, eps)
  if clip_denoised:
    pred_xstart = jnp.clip(pred_xstart, -1, 1)
  mean, _, _ = q_posterior_mean_variance(diffusion, pred_xstart, x, t)
  return {"mean": mean, "variance": var, "log_variance": log_var, "pred_xstart": pred_xstart}


def p_sample(diffusion: GaussianDiffusion, model_out: jax.Array, x: jax.Array, t: jax.Array,
             noise: jax.Array, clip_denoised: bool = False) -> tuple[jax.Array, jax.Array]:
  """One ancestral step: (x_{t-1}, pred_xstart), with no noise added at index 0."""
  out = p_mean_variance(diffusion, model_out, x, t, clip_denoised)
  nonzero = extract((np.arange(diffusion.num_timesteps) != 0).astype(np.float64), t, x.ndim)
  return out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise, out["pred_xstart"]


def ddim_sample(diffusion: GaussianDiffusion, model_out: jax.Array, x: jax.Array, t: jax.Array,
                noise: Optional[jax.Array], eta: float = 0.0,
                clip_denoised: bool = False) -> tuple[jax.Array, jax.Array]:
  """One DDIM step (eq. 12 of the DDIM paper) with stochasticity `eta`: (x_prev, pred_xstart)."""
  out = p_mean_variance(diffusion, model_out, x, t, clip_denoised)
  eps = predict_eps_from_xstart(diffusion, x, t, out["pred_xstart"])
  abar = extract(diffusion.alphas_cumprod, t, x.ndim)
  abar_prev = extract(diffusion.alphas_cumprod_prev, t, x.ndim)
  sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar)) * jnp.sqrt(1 - abar / abar_prev)
  x_prev = out["pred_xstart"] * jnp.sqrt(abar_prev) + jnp.sqrt(1 - abar_prev - sigma ** 2) * eps
  if eta != 0:
    nonzero = extract((np.arange(diffusion.num_timesteps) != 0).astype(np.float64), t, x.ndim)
    x_prev = x_prev + nonzero * sigma * noise
  return x_prev, out["pred_xstart"]
