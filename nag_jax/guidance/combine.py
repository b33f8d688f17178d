"""The guidance algebra, given the branch outputs of one step. This file is the whole idea of NAG.

Every term acts on the model's own output space: eps for DiT, velocity for SiT (the guided channels).
For the linear terms (CFG, NAG, DoG, autoguidance, TSG) that equals guiding the denoised x0, whose map
from (x, output) is affine with the same coefficients for every branch; CFG-Zero* is published in velocity
space; APG's projection is stated in x0 space by its paper and applied to the raw prediction here, as
diffusers' `AdaptiveProjectedGuidance` does.

  CFG (class):  uncond + s (cond - uncond)           s = cfg_scale, 1 = off
  NAG (noise):  (w + 1) out(x|t) - w out(x|t_pseudo) w = nag_scale, 0 = off   (paper eq. 11)
  NAG + CFG:    out(c,t) + (s - 1)(out(c,t) - out(null,t)) + w (out(c,t) - out(c,t_pseudo))
  nested form:  CFG applied to NAG-guided cond and NAG-guided uncond (uncond uses (null, t_pseudo))
  DoG:          + (s_dog - 1)(out(c,t) - parent(null,t)), the parent being the pre-trained model.
  Autoguidance: bad + s (cond - bad), bad = parent(c,t), a weaker model of the same family with the same
                conditioning (Karras et al. 2024)                     s = autoguidance_scale, 1 = off
  TSG:          cond + w (cond - out(c, t~)), t~ = t moved `tsg_shift` (noise fraction) towards noise
                (Sadat et al. 2024, time-step guidance, with a deterministic perturbation)  w = tsg_scale, 0 = off
  CFG-Zero*:    a* uncond + s (cond - a* uncond), a* = <cond, uncond> / ||uncond||^2 per sample (Fan et al.
                2025); its zero-init (`cfg_zero_init_steps`) outputs 0 on the sampler's first steps
                                                                      s = cfg_zero_scale, 1 = off
  APG:          D = cond - uncond + beta D_prev (momentum, the previous step's D), D <- D min(1, r / ||D||)
                (r = apg_norm_threshold, 0 = no clipping), D = D_par + D_orth with D_par parallel to cond;
                cond + (s - 1)(D_orth + eta D_par) (Sadat et al. 2024, adaptive projected guidance)
                                                                      s = apg_scale, 1 = off
Terms add their updates to the conditional output (three-branch style); inner products and norms are per
sample over all guided elements.

Only the first `latent_channels` are guided (CFG optionally only the first `cfg_channels`, the official
3-channel quirk); DiT's variance channels always come from the conditional branch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nag_jax.guidance.config import GuidanceConfig

_EPS = 1e-8  # keeps a* and the APG projection finite for an all-zero branch


def cfg(cond: jax.Array, uncond: jax.Array, scale: float) -> jax.Array:
  """Classifier-free guidance, CFG convention."""
  return uncond + scale * (cond - uncond)


def nag(cond_t: jax.Array, cond_pseudo: jax.Array, w: float) -> jax.Array:
  """Classifier-free noise awareness guidance, paper eq. 11."""
  return (w + 1) * cond_t - w * cond_pseudo


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-sample inner product over all but the batch axis, shaped to broadcast against a."""
  return jnp.sum(a * b, axis=tuple(range(1, a.ndim)), keepdims=True)


def cfg_zero_star(cond: jax.Array, uncond: jax.Array, scale: float) -> jax.Array:
  """CFG-Zero*: CFG against the unconditional output rescaled by the optimised a* of each sample."""
  alpha = _dot(cond, uncond) / (_dot(uncond, uncond) + _EPS)
  return cfg(cond, alpha * uncond, scale)


def apg(cond: jax.Array, delta: jax.Array, scale: float, eta: float, norm_threshold: float) -> jax.Array:
  """APG from the (momentum-averaged) difference `delta`: clipped, split along cond, orthogonal part kept."""
  if norm_threshold > 0:
    delta = delta * jnp.minimum(1.0, norm_threshold / jnp.sqrt(_dot(delta, delta) + _EPS))
  unit = cond / jnp.sqrt(_dot(cond, cond) + _EPS)
  parallel = _dot(delta, unit) * unit
  return cond + (scale - 1) * (delta - parallel + eta * parallel)


def _channel_mask(n_channels: int, guided: int | None) -> jax.Array:
  guided = n_channels if guided is None else min(guided, n_channels)
  return (jnp.arange(n_channels) < guided).astype(jnp.float32)


def combine(outs: dict, g: GuidanceConfig, active: frozenset, latent_channels: int) -> jax.Array:
  """Guided output from the branch outputs `outs` (keys: cond, cfg_uncond, nag_uncond, nag_cfg_uncond, dog,
  autoguidance, tsg_uncond, and apg_delta: APG's momentum-averaged cond - uncond of the guided channels)."""
  full = outs["cond"]
  c = latent_channels
  cond = full[..., :c]
  cfg_mask = _channel_mask(c, g.cfg_channels)
  if "nag" in active and g.nag_form == "nested":
    cond_n = nag(cond, outs["nag_uncond"][..., :c], g.nag_scale)
    guided = cond_n
    if "cfg" in active:
      uncond_n = nag(outs["cfg_uncond"][..., :c], outs["nag_cfg_uncond"][..., :c], g.nag_scale)
      guided = cond_n + cfg_mask * (cfg(cond_n, uncond_n, g.cfg_scale) - cond_n)
  else:
    guided = cond
    if "cfg" in active:
      guided = guided + cfg_mask * (cfg(cond, outs["cfg_uncond"][..., :c], g.cfg_scale) - cond)
    if "nag" in active:
      guided = guided + (nag(cond, outs["nag_uncond"][..., :c], g.nag_scale) - cond)
  if "dog" in active:
    guided = guided + (cfg(cond, outs["dog"][..., :c], g.dog_scale) - cond)
  if "autoguidance" in active:
    guided = guided + (cfg(cond, outs["autoguidance"][..., :c], g.autoguidance_scale) - cond)
  if "tsg" in active:
    guided = guided + (nag(cond, outs["tsg_uncond"][..., :c], g.tsg_scale) - cond)
  if "cfg_zero" in active:
    guided = guided + (cfg_zero_star(cond, outs["cfg_uncond"][..., :c], g.cfg_zero_scale) - cond)
  if "apg" in active:
    guided = guided + (apg(cond, outs["apg_delta"], g.apg_scale, g.apg_eta, g.apg_norm_threshold) - cond)
  return jnp.concatenate([guided, full[..., c:]], axis=-1)
